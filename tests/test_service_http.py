"""The cloud service over real HTTP: a uvicorn server on 127.0.0.1 (free port), httpx clients.

Covers the round trip with a DCAM update, auth (401, another device's state), limits (413, 429, 503 with
Retry-After), a few dozen malformed requests (table + property-based) that must all be 4xx JSON with no
traceback while other devices keep being served, dynamic batching and its error isolation, and the docs.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from _service_helpers import TOK1, TOK2, TOKENS, C, H, W, save_tiny, tiny_cloud, upload
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tandemseg.cloud.app import Limits, create_app, running_server
from tandemseg.cloud.auth import TokenMap
from tandemseg.cloud.batching import BatchConfig, MicroBatcher, Overloaded
from tandemseg.cloud.service import CloudService, ModelSegmenter
from tandemseg.data.classes import CAMVID
from tandemseg.device.http_link import HttpLink, RetryPolicy
from tandemseg.errors import SpecError
from tandemseg.wire import http as wire
from tandemseg.wire.messages import CloudReply, UploadRequest
from tandemseg.wire.payload import decode_label_png, encode_frame

REPO = Path(__file__).resolve().parents[1]
LIMITS = Limits(wire.WireLimits(max_body_bytes=64 * 1024, max_side=256, max_pixels=256 * 256), max_inflight_per_device=16)


@pytest.fixture(scope="module")
def server():
    service = CloudService(ModelSegmenter(tiny_cloud()), CAMVID, dcam_alpha=0.5, initial_u=np.eye(C))
    app = create_app(service, TokenMap.parse(TOKENS), LIMITS, BatchConfig(max_batch=4, max_wait_ms=20, max_queue=32))
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield url, client


def post(client: httpx.Client, req: UploadRequest, token: str | None = TOK1, **override) -> httpx.Response:
    headers, body = wire.encode_request(req, token)
    headers.update({k: v for k, v in override.items() if k != "body" and v is not None})
    for k in [k for k, v in override.items() if v is None]:
        headers.pop(k, None)
    return client.post(wire.SEGMENT_PATH, content=override.get("body", body), headers=headers)


def assert_clean_error(r: httpx.Response, status: int | tuple[int, ...]) -> str:
    """A 4xx/5xx answer is JSON {"error": "..."} and never shows a traceback."""
    assert r.status_code in ((status,) if isinstance(status, int) else status), (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    message = r.json()["error"]
    assert message and "Traceback" not in r.text and 'File "' not in r.text
    return message


# ----------------------------------------------------------------------------- round trip, state, docs


def test_round_trip_with_dcam_update(server):
    url, client = server
    link = HttpLink(url, TOK2, device_id="dev2", retry=RetryPolicy(timeout_s=60.0, deadline_s=120.0))
    try:
        reply = link.submit(upload("dev2", 7, seed=3)).result(timeout=30)
        assert reply.frame_id == 7 and decode_label_png(reply.label_png).shape == (H, W)
        assert reply.u_matrix is not None and reply.u_matrix.shape == (C, C) and reply.u_version >= 1  # DCAM changed U
        state = link.get_state()
        assert state["device_id"] == "dev2" and state["u_version"] == reply.u_version
        assert np.allclose(np.asarray(state["u"]), reply.u_matrix, atol=1e-6)
        summary = link.stats.summary()
        assert summary["replies"] == 1 and summary["bytes_up"] > 0 and summary["bytes_down"] == reply.bytes_down
    finally:
        link.close()


def test_reply_without_probs_carries_no_new_u_when_device_is_current(server):
    _, client = server
    r = post(client, upload("dev1", 1, probs=False))
    assert r.status_code == 200
    state = client.get("/v1/devices/dev1/state", headers={"Authorization": f"Bearer {TOK1}"}).json()
    req = upload("dev1", 2, probs=False)
    req.u_version = state["u_version"]  # the device already holds the newest U
    reply = wire.decode_reply(*_hb(post(client, req)), 2)
    assert reply.u_matrix is None and reply.u_version == state["u_version"]


def _hb(r: httpx.Response):
    assert r.status_code == 200, r.text
    return r.headers, r.content


def test_health_metrics_openapi_and_docs(server):
    _, client = server
    assert client.get("/v1/health").json()["classes"] == C
    post(client, upload("dev1", 3))
    metrics = client.get("/metrics").text
    for name in ("tandemseg_requests_total", "tandemseg_request_seconds", "tandemseg_batch_size", "tandemseg_queue_depth"):
        assert name in metrics
    schema = client.get("/openapi.json").json()
    headers = {p["name"] for p in schema["paths"]["/v1/segment"]["post"]["parameters"]}
    assert {wire.H_FRAME, wire.H_CODEC, wire.H_SIZE, wire.H_IMAGE_BYTES, wire.H_PROBS_SHAPE} <= headers
    doc = (REPO / "docs" / "protocol.md").read_text()
    for path in schema["paths"]:
        assert path in doc, f"docs/protocol.md does not document {path}"
    for h in headers:
        assert h in doc


# ----------------------------------------------------------------------------- auth


def test_auth_missing_wrong_and_foreign(server):
    _, client = server
    assert_clean_error(post(client, upload(), token=None), 401)
    assert_clean_error(post(client, upload(), token="token-not-known"), 401)
    r = client.post(wire.SEGMENT_PATH, content=b"x", headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert_clean_error(r, 401)
    auth1 = {"Authorization": f"Bearer {TOK1}"}
    assert_clean_error(client.get("/v1/devices/dev2/state", headers=auth1), 403)
    assert_clean_error(client.put("/v1/devices/dev2/state", headers=auth1, json={"u": np.eye(C).tolist()}), 403)
    assert_clean_error(client.get("/v1/devices/dev1/state"), 401)
    # a device cannot upload in another's name: the header must match the token
    assert_clean_error(post(client, upload("dev1"), **{wire.H_DEVICE: "dev2"}), 403)


def test_device_changes_only_its_own_state(server):
    _, client = server
    auth1, auth2 = {"Authorization": f"Bearer {TOK1}"}, {"Authorization": f"Bearer {TOK2}"}
    u2 = 2.0 * np.eye(C)
    r = client.put("/v1/devices/dev2/state", headers=auth2, json={"u": u2.tolist(), "u_version": 0})
    assert r.status_code == 200 and r.json()["u_version"] == 0
    before = client.get("/v1/devices/dev2/state", headers=auth2).json()
    for i in range(3):
        assert post(client, upload("dev1", 100 + i, seed=i)).status_code == 200
    after = client.get("/v1/devices/dev2/state", headers=auth2).json()
    assert after == before  # dev1's uploads never touch dev2's U, version or counters
    assert client.get("/v1/devices/dev1/state", headers=auth1).json()["u_version"] >= 1


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b'{"v": 1}', json.dumps({"u": [[1, 2], [3, 4]]}).encode(), b'{"u": NaN}',
     json.dumps({"u": np.eye(C).tolist(), "u_version": -1}).encode(), json.dumps({"u": np.eye(C).tolist(), "u_version": "3"}).encode(),
     json.dumps({"u": [["a"] * C] * C}).encode(), ("{\"u\": [" + ",".join(["[" + ",".join(["NaN"] * C) + "]"] * C) + "]}").encode(),
     b"{\"u\": " + b"[" * 30_000 + b"]" * 30_000 + b"}",  # deeper than the JSON parser recurses (fits the 64 kB limit)
     json.dumps({"u": [[10**400] * C] * C}).encode(),  # an integer no float holds
     json.dumps({"u": np.eye(C).tolist(), "u_version": 2**60}).encode()],  # a version the cloud could not count on from
)
def test_bad_state_bodies(server, body):
    _, client = server
    r = client.put("/v1/devices/dev1/state", headers={"Authorization": f"Bearer {TOK1}", "Content-Type": "application/json"}, content=body)
    assert_clean_error(r, 400)


def test_token_map_parsing(tmp_path, monkeypatch):
    m = TokenMap.parse(" a:aaaaaaaa ,\n b:bbbbbbbb # comment")
    assert m.devices == ["a", "b"] and m.device_for_token("bbbbbbbb") == "b" and m.device_for_token("bbbbbbb") is None
    assert m.device_for_header("Bearer aaaaaaaa") == "a" and m.device_for_header("aaaaaaaa") is None
    f = tmp_path / "tokens"
    f.write_text("# devices\ncam1:secret-cam-1\n")
    assert TokenMap.from_file(f).devices == ["cam1"]
    monkeypatch.setenv("TANDEMSEG_TOKENS", "x:xxxxxxxx")
    assert TokenMap.from_env().devices == ["x"]
    for bad in ("", "a", "a:short", "a:aaaaaaaa,a:bbbbbbbb", "a:aaaaaaaa,b:aaaaaaaa", "bad id!:aaaaaaaa"):
        with pytest.raises(SpecError):
            TokenMap.parse(bad)


# ----------------------------------------------------------------------------- limits


def test_body_and_image_limits(server):
    _, client = server
    big = upload()
    big.payload = big.payload + b"\0" * (70 * 1024)
    assert_clean_error(post(client, big), 413)
    huge = upload()
    assert_clean_error(post(client, huge, **{wire.H_SIZE: "300x300"}), 413)  # beyond max_side 256
    assert_clean_error(post(client, huge, **{wire.H_SIZE: "5000x5000"}), 413)
    big_image = upload(h=260, w=40, probs=False)  # a real frame taller than max_side
    assert_clean_error(post(client, big_image), 413)


class SlowService:
    """A stand-in CloudService whose forward takes `delay` s (to fill the queue deterministically)."""

    def __init__(self, delay: float) -> None:
        self.delay, self.classes = delay, CAMVID
        self.batches: list[int] = []

    def segment_batch(self, requests: list[UploadRequest]) -> list[CloudReply]:
        time.sleep(self.delay)
        self.batches.append(len(requests))
        from tandemseg.wire.payload import encode_label_png

        return [CloudReply(r.frame_id, encode_label_png(np.zeros((r.height, r.width), np.uint8))) for r in requests]

    def device_state(self, device_id: str) -> dict:
        return {"device_id": device_id, "u_version": 0, "u": None}


def _concurrent(url: str, requests: list[tuple[UploadRequest, str]]) -> list[httpx.Response]:
    results: list = [None] * len(requests)

    def go(i: int, req: UploadRequest, token: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            results[i] = post(c, req, token)

    threads = [threading.Thread(target=go, args=(i, r, t)) for i, (r, t) in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_overload_answers_503_with_retry_after_and_recovers():
    service = SlowService(0.4)
    app = create_app(service, TokenMap.parse(TOKENS), LIMITS, BatchConfig(max_batch=1, max_wait_ms=0, max_queue=1))
    with running_server(app) as url:
        rs = _concurrent(url, [(upload("dev1", i, probs=False), TOK1) for i in range(4)] + [(upload("dev2", 9, probs=False), TOK2)])
        codes = sorted(r.status_code for r in rs)
        assert 200 in codes and 503 in codes, codes
        for r in rs:
            if r.status_code == 503:
                assert_clean_error(r, 503)
                assert int(r.headers["retry-after"]) >= 1
        with httpx.Client(base_url=url, timeout=30) as c:  # once the queue drains, requests go through again
            assert post(c, upload("dev2", 10, probs=False), TOK2).status_code == 200


def test_one_device_cannot_take_all_slots():
    service = SlowService(0.4)
    limits = Limits(LIMITS.wire, max_inflight_per_device=1)
    app = create_app(service, TokenMap.parse(TOKENS), limits, BatchConfig(max_batch=4, max_wait_ms=5, max_queue=16))
    with running_server(app) as url:
        rs = _concurrent(url, [(upload("dev1", i, probs=False), TOK1) for i in range(3)])
        assert sorted(r.status_code for r in rs).count(429) >= 1
        assert all(r.status_code in (200, 429) for r in rs)
        with httpx.Client(base_url=url, timeout=30) as c:
            assert post(c, upload("dev2", 1, probs=False), TOK2).status_code == 200  # the other device is served


# ----------------------------------------------------------------------------- malformed input


def _png(h=H, w=W) -> bytes:
    return encode_frame(np.zeros((h, w, 3), np.uint8), "png")


GOOD = upload()
PROBS = GOOD.device_probs
MALFORMED = {
    "no protocol": {wire.H_PROTOCOL: None},
    "protocol 1 (retired)": {wire.H_PROTOCOL: "1"},
    "protocol 3": {wire.H_PROTOCOL: "3"},
    "protocol text": {wire.H_PROTOCOL: "one"},
    "no frame id": {wire.H_FRAME: None},
    "negative frame": {wire.H_FRAME: "-1"},
    "NaN frame": {wire.H_FRAME: "NaN"},
    "float frame": {wire.H_FRAME: "1.5"},
    "huge frame": {wire.H_FRAME: "99999999999999999999"},
    "unknown codec": {wire.H_CODEC: "gif"},
    "jpeg quality 0": {wire.H_CODEC: "jpeg:0"},
    "webp quality 101": {wire.H_CODEC: "webp:101"},
    "codec lies": {wire.H_CODEC: "jpeg:90"},
    "no size": {wire.H_SIZE: None},
    "zero size": {wire.H_SIZE: "0x48"},
    "size 3 dims": {wire.H_SIZE: "32x48x3"},
    "NaN size": {wire.H_SIZE: "nanx48"},
    "wrong size": {wire.H_SIZE: "48x32"},
    "image bytes beyond body": {wire.H_IMAGE_BYTES: "999999"},
    "image bytes zero": {wire.H_IMAGE_BYTES: "0"},
    "image bytes text": {wire.H_IMAGE_BYTES: "lots"},
    "empty body": {"body": b""},
    "garbage body": {"body": b"\x89PNG garbage" * 10, wire.H_IMAGE_BYTES: "130", wire.H_PROBS_SHAPE: None},
    "truncated png": {"body": _png()[:60], wire.H_IMAGE_BYTES: "60", wire.H_PROBS_SHAPE: None},
    "corrupt png data": {"body": _png()[:40] + b"\0" * 40 + _png()[80:], wire.H_IMAGE_BYTES: str(len(_png())), wire.H_PROBS_SHAPE: None},
    "probs wrong classes": {wire.H_PROBS_SHAPE: f"{C + 1}x4x6"},
    "probs bigger than frame": {wire.H_PROBS_SHAPE: f"{C}x64x6"},
    "probs shape lies": {wire.H_PROBS_SHAPE: f"{C}x4x5"},
    "probs without shape": {wire.H_PROBS_SHAPE: None},
    "shape without probs": {"body": GOOD.payload},
    "probs not zlib": {"body": GOOD.payload + b"not zlib at all"},
    "zlib bomb": {"body": GOOD.payload + zlib.compress(b"\0" * 5_000_000, 9)},
    "negative u version": {wire.H_U_VERSION: "-3"},
    "bad content length": {"Content-Length": "abc"},
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_requests_are_4xx_json(server, case):
    _, client = server
    override = dict(MALFORMED[case])
    if case == "bad content length":  # httpx refuses to send a broken Content-Length; use a raw socket
        r = _raw_post(client, GOOD, "abc")
        assert r[0] == 400 or r[0] == 413 or r[0] == 422, r
        return
    r = post(client, GOOD, **override)
    assert_clean_error(r, (400, 413, 422))


def _raw_post(client: httpx.Client, req: UploadRequest, length: str) -> tuple[int, bytes]:
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(str(client.base_url))
    headers, body = wire.encode_request(req, TOK1)
    lines = [f"POST {wire.SEGMENT_PATH} HTTP/1.1", f"Host: {u.hostname}", f"Content-Length: {length}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        data = s.recv(65536)
    return int(data.split(b" ", 2)[1]), data


def test_server_keeps_serving_after_malformed_storm(server):
    url, client = server
    for case in list(MALFORMED)[:10]:
        if case != "bad content length":
            post(client, GOOD, **MALFORMED[case])
    assert client.get("/v1/health").status_code == 200
    assert post(client, upload("dev2", 55, seed=5), TOK2).status_code == 200


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.binary(max_size=2048),
    frame_id=st.one_of(st.text(max_size=12), st.integers(-5, 2**70).map(str)),
    size=st.one_of(st.text(max_size=12), st.tuples(st.integers(-2, 300), st.integers(-2, 300)).map(lambda t: f"{t[0]}x{t[1]}")),
    image_bytes=st.one_of(st.text(max_size=8), st.integers(-2, 5000).map(str)),
    probs_shape=st.one_of(st.none(), st.text(max_size=12), st.tuples(*[st.integers(0, 20)] * 3).map(lambda t: "x".join(map(str, t)))),
    codec=st.sampled_from(["png", "jpeg:90", "webp:50", "gif", "", "jpeg:x"]),
)
def test_property_random_requests_never_5xx(server, body, frame_id, size, image_bytes, probs_shape, codec):
    _, client = server
    headers = {"Authorization": f"Bearer {TOK1}", wire.H_PROTOCOL: "1", wire.H_FRAME: frame_id, wire.H_SIZE: size,
               wire.H_IMAGE_BYTES: image_bytes, wire.H_CODEC: codec}
    if probs_shape is not None:
        headers[wire.H_PROBS_SHAPE] = probs_shape
    headers = {k: v for k, v in headers.items() if v.isascii() and v.isprintable() and v == v.strip()}
    r = client.post(wire.SEGMENT_PATH, content=body, headers=headers)
    assert r.status_code < 500, r.text
    if r.status_code != 200:
        assert_clean_error(r, r.status_code)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(1, 400), flip=st.integers(0, 400), value=st.integers(0, 255))
def test_property_damaged_png_frames(server, cut, flip, value):
    _, client = server
    payload = bytearray(GOOD.payload)
    payload[min(flip, len(payload) - 1)] = value
    payload = bytes(payload[: max(1, len(payload) - cut)])
    r = client.post(wire.SEGMENT_PATH, content=payload, headers={
        "Authorization": f"Bearer {TOK1}", wire.H_PROTOCOL: "1", wire.H_FRAME: "1", wire.H_CODEC: "png",
        wire.H_SIZE: f"{H}x{W}", wire.H_IMAGE_BYTES: str(len(payload))})
    assert r.status_code in (200, 400), r.text  # a flip may land in an ancillary byte and still decode


# ----------------------------------------------------------------------------- batching


def test_micro_batcher_batches_and_isolates_errors():
    sizes: list[int] = []

    def fn(items: list[int]) -> list[int]:
        sizes.append(len(items))
        if any(i < 0 for i in items):
            raise ValueError(f"bad item in {items}")
        return [i * 10 for i in items]

    async def scenario() -> tuple[list, list]:
        b = MicroBatcher(fn, BatchConfig(max_batch=4, max_wait_ms=50, max_queue=16))
        await b.start()
        good = await asyncio.gather(*[b.submit(i) for i in range(8)])
        mixed = await asyncio.gather(*[b.submit(i) for i in (1, -1, 2)], return_exceptions=True)
        await b.stop()
        return good, mixed

    good, mixed = asyncio.run(scenario())
    assert good == [i * 10 for i in range(8)]
    assert sizes[:2] == [4, 4]  # two full batches
    assert mixed[0] == 10 and mixed[2] == 20 and isinstance(mixed[1], ValueError)


def test_micro_batcher_overload():
    async def scenario():
        b = MicroBatcher(lambda items: (time.sleep(0.2), items)[1], BatchConfig(max_batch=1, max_wait_ms=0, max_queue=1))
        await b.start()
        results = await asyncio.gather(*[b.submit(i) for i in range(5)], return_exceptions=True)
        await b.stop()
        return results

    results = asyncio.run(scenario())
    assert any(isinstance(r, Overloaded) and r.retry_after >= 1 for r in results)
    assert 0 in results


def test_concurrent_uploads_share_batches_and_a_corrupt_one_fails_alone():
    service = CloudService(ModelSegmenter(tiny_cloud()), CAMVID)
    seen: list[int] = []
    original = service.segment_batch
    service.segment_batch = lambda reqs: (seen.append(len(reqs)), original(reqs))[1]  # type: ignore[method-assign]
    app = create_app(service, TokenMap.parse(TOKENS), LIMITS, BatchConfig(max_batch=8, max_wait_ms=300, max_queue=32))
    with running_server(app) as url:
        reqs = [(upload("dev1", i, seed=i), TOK1) for i in range(5)]
        bad = upload("dev2", 99)
        bad.payload = bad.payload[:30] + b"\0" * (len(bad.payload) - 30)  # same length, corrupt pixels
        rs = _concurrent(url, reqs + [(bad, TOK2)])
    assert [r.status_code for r in rs[:5]] == [200] * 5
    assert_clean_error(rs[5], 400)
    assert max(seen) > 1  # the good frames ran together


@pytest.mark.parametrize("public, status", [(False, 403), (True, 200)])
def test_metrics_answer_remote_clients_only_when_allowed(public, status):
    """Starlette's test client calls from host 'testclient', not loopback (the real server is only ever on 127.0.0.1 here)."""
    from starlette.testclient import TestClient

    app = create_app(CloudService(ModelSegmenter(tiny_cloud()), CAMVID), TokenMap.parse(TOKENS), Limits(metrics_public=public), BatchConfig())
    with TestClient(app) as client:
        r = client.get("/metrics")
    assert r.status_code == status
    if status == 403:
        assert "--metrics-public" in r.json()["error"]


def test_a_bad_item_is_isolated_by_halves_not_one_by_one():
    """8 items with one bad: the batch, then halves (4 + 4), quarters of the bad half (2 + 2), then 1 + 1: 7 forwards,
    against 1 + 8 when every item re-runs alone; only the bad item fails."""
    calls: list[list[int]] = []

    def fn(items: list[int]) -> list[int]:
        calls.append(list(items))
        if 5 in items:
            raise ValueError("bad frame 5")
        return items

    async def scenario() -> list:
        b = MicroBatcher(fn, BatchConfig(max_batch=8, max_wait_ms=200, max_queue=16))
        await b.start()
        out = await asyncio.gather(*[b.submit(i) for i in range(8)], return_exceptions=True)
        await b.stop()
        return out

    out = asyncio.run(scenario())
    assert [o for i, o in enumerate(out) if i != 5] == [0, 1, 2, 3, 4, 6, 7] and isinstance(out[5], ValueError)
    assert len(calls) == 7 and calls[0] == list(range(8)) and [5] in calls


def test_a_slow_client_is_refused_with_408_and_holds_no_slot() -> None:
    """A body that trickles in past the read deadline gets a 408; the server keeps answering others meanwhile."""
    import socket

    service = CloudService(ModelSegmenter(tiny_cloud()), CAMVID)
    limits = Limits(LIMITS.wire, max_inflight_per_device=16, read_timeout_s=0.5)
    app = create_app(service, TokenMap.parse(TOKENS), limits, BatchConfig(max_batch=2, max_wait_ms=5))
    with running_server(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        headers, body = wire.encode_request(upload("dev1", 1, probs=False), TOK1)
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as slow:
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            slow.sendall(f"POST {wire.SEGMENT_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body[:10])
            t0 = time.perf_counter()
            assert post(client, upload("dev2", 2, probs=False), TOK2).status_code == 200  # others are served meanwhile
            reply = slow.recv(4096).decode(errors="replace")
            assert reply.startswith("HTTP/1.1 408") and "did not arrive" in reply, reply[:200]
            assert time.perf_counter() - t0 < 5


def test_a_request_past_its_queue_deadline_is_not_computed() -> None:
    from tandemseg.cloud.batching import QueueTimeout

    ran: list[int] = []

    def slow_forward(items: list[int]) -> list[int]:
        time.sleep(0.3)
        ran.extend(items)
        return items

    async def main() -> list:
        batcher = MicroBatcher(slow_forward, BatchConfig(max_batch=1, max_wait_ms=0, max_queue=8, max_queue_s=0.1))
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
        finally:
            await batcher.stop()

    results = asyncio.run(main())
    assert results[0] == 0 and all(isinstance(r, QueueTimeout) and r.retry_after >= 1 for r in results[1:]), results
    assert ran == [0]  # the late ones were never computed


def test_no_route_lets_a_device_touch_another_devices_resources(server) -> None:
    """Every route with a device id in its path, every method: another device's token gets 403, none gets 401."""
    url, client = server
    app = create_app(CloudService(ModelSegmenter(tiny_cloud()), CAMVID), TokenMap.parse(TOKENS))
    routes = [(m, r.path) for r in app.routes if "{device_id}" in getattr(r, "path", "") for m in r.methods if m != "HEAD"]
    assert {("GET", "/v1/devices/{device_id}/state"), ("PUT", "/v1/devices/{device_id}/state"), ("GET", "/v1/devices/{device_id}/model")} <= set(routes)
    for method, path in routes:
        target = path.replace("{device_id}", "dev1")
        body = json.dumps({"u": np.eye(C).tolist()}) if method == "PUT" else None
        foreign = client.request(method, target, headers={"Authorization": f"Bearer {TOK2}"}, content=body)
        assert foreign.status_code == 403 and "dev2" in foreign.json()["error"], (method, path, foreign.text)
        anonymous = client.request(method, target, content=body)
        assert anonymous.status_code == 401, (method, path, anonymous.status_code)
    assert client.get("/v1/devices/dev1/state", headers={"Authorization": f"Bearer {TOK1}"}).status_code == 200  # the owner may


def test_the_accepted_frame_size_follows_the_served_model(tmp_path) -> None:
    from tandemseg.cli.service import served_max_side

    folder = save_tiny(tmp_path / "cloud", "cloud")
    assert served_max_side(folder) == 4096  # a card that does not say what it was trained on
    card = json.loads((folder / "card.json").read_text())
    card["frame_hw"] = [360, 480]
    (folder / "card.json").write_text(json.dumps(card))
    assert served_max_side(folder) == 960
    limits = wire.WireLimits(max_side=960, max_pixels=960 * 960)
    headers, body = wire.encode_request(upload("dev1", 0, probs=False, h=968, w=64), TOK1)
    with pytest.raises(wire.WireError, match=r"exceeds this server.s limit \(960 pixels a side") as e:
        wire.decode_request(headers, body, "dev1", limits)
    assert e.value.status == 413


def test_a_short_soak_has_no_errors_and_reports_every_window() -> None:
    """The suite's version of scripts/soak_results.sh: 10 devices, open loop, 12 s; 0 errors, per-window figures."""
    from tandemseg.eval.loadtest import LoadSpec, run_loadtest

    tokens = TokenMap.parse(",".join(f"dev{i}:soak-token-{i}-000000" for i in range(10)))
    app = create_app(CloudService(ModelSegmenter(tiny_cloud()), CAMVID), tokens, Limits(max_inflight_per_device=4),
                     BatchConfig(max_batch=4, max_wait_ms=5))
    with running_server(app) as url:
        spec = LoadSpec(devices=10, frames=12, height=H, width=W, num_classes=C, rate=10.0, max_seconds=12.0, window_s=4.0, timeout_s=10.0)
        result = run_loadtest(url, tokens.credentials(), spec)
    assert result["errors"] == {} and result["ok"] == 120, result["errors"]
    assert len(result["windows"]) == 3 and sum(w["ok"] for w in result["windows"]) == 120
    assert all(w["latency_ms_p99"] is not None for w in result["windows"])
