"""The networked device: HttpLink retries and fallbacks, a server killed mid-stream, and agreement with `collab`."""

from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np
import pytest
from _service_helpers import TOK1, TOK2, TOKENS, C, save_tiny, tiny_cloud, tiny_device, upload
from typer.testing import CliRunner

from tandemseg.cli import app as cli_app
from tandemseg.cloud.app import Limits, ServerThread, create_app, running_server
from tandemseg.cloud.auth import TokenMap
from tandemseg.cloud.batching import BatchConfig
from tandemseg.cloud.service import CloudService, ModelSegmenter
from tandemseg.data.classes import CAMVID
from tandemseg.data.spec import open_dataset
from tandemseg.device.budget import BudgetSpec, make_controller
from tandemseg.device.http_link import HttpLink, LinkError, RetryPolicy
from tandemseg.device.policies import make_policy
from tandemseg.device.runtime import DeviceRuntime
from tandemseg.device.uncertainty import UncertaintyMatrix
from tandemseg.eval import cache as K_
from tandemseg.eval import collab as C_
from tandemseg.eval import replay as R_
from tandemseg.eval.device_stream import StreamConfig, run_device_client, run_stream
from tandemseg.wire import http as wire
from tandemseg.wire.messages import CloudReply
from tandemseg.wire.payload import encode_label_png

FAST = RetryPolicy(attempts=3, backoff_s=0.01, backoff_max_s=0.05, timeout_s=2.0, deadline_s=3.0)
PATIENT = RetryPolicy(attempts=2, timeout_s=60.0, deadline_s=120.0)  # real servers on a busy machine: no spurious fallbacks


def ok_reply(request: httpx.Request) -> httpx.Response:
    frame = int(request.headers[wire.H_FRAME])
    h, w = (int(v) for v in request.headers[wire.H_SIZE].split("x"))
    headers, body = wire.encode_reply(CloudReply(frame, encode_label_png(np.zeros((h, w), np.uint8))))
    return httpx.Response(200, headers=headers, content=body)


def mock_link(handler, retry: RetryPolicy = FAST, **kw) -> HttpLink:
    return HttpLink("http://cloud.test", TOK1, device_id="dev1", retry=retry, transport=httpx.MockTransport(handler), **kw)


# ----------------------------------------------------------------------------- HttpLink behaviour


def test_link_retries_overload_then_succeeds():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(time.perf_counter())
        if len(calls) < 3:
            return httpx.Response(503, headers={"Retry-After": "0"}, json={"error": "busy"})
        return ok_reply(request)

    link = mock_link(handler)
    reply = link.submit(upload()).result(timeout=10)
    link.close()
    assert reply.frame_id == 0 and len(calls) == 3
    s = link.stats.summary()
    assert s["retries"] == 2 and s["replies"] == 1 and s["failures"] == {}


@pytest.mark.parametrize("status", [400, 401, 403, 413])
def test_link_does_not_retry_what_retrying_cannot_fix(status):
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(status, json={"error": "no"})

    link = mock_link(handler)
    with pytest.raises(LinkError) as e:
        link.submit(upload()).result(timeout=10)
    link.close()
    assert len(calls) == 1 and e.value.reason == f"http_{status}"


def test_link_bounded_retries_on_connection_errors_and_bad_replies():
    def refuse(request):
        raise httpx.ConnectError("refused", request=request)

    link = mock_link(refuse)
    with pytest.raises(LinkError) as e:
        link.submit(upload()).result(timeout=10)
    link.close()
    assert e.value.reason == "connect" and link.stats.retries == FAST.attempts - 1

    link = mock_link(lambda r: httpx.Response(200, headers={wire.H_FRAME: "999", wire.H_LABEL_BYTES: "1"}, content=b"x"))
    with pytest.raises(LinkError) as e:
        link.submit(upload()).result(timeout=10)
    link.close()
    assert e.value.reason == "bad_reply"


def test_link_respects_its_deadline_and_never_blocks_submit():
    release = threading.Event()

    def blocked(request):
        release.wait(30)  # the network hangs until the test lets go
        return httpx.Response(503, headers={"Retry-After": "30"}, json={"error": "busy"})

    link = mock_link(blocked, RetryPolicy(attempts=5, backoff_s=0.01, timeout_s=1.0, deadline_s=0.5), max_inflight=1, max_pending=2)
    uploads = [upload(frame_id=i) for i in range(4)]
    futures = [link.submit(u) for u in uploads]  # returns although the first upload is stuck in the network
    assert not futures[0].done() and not futures[1].done()
    assert futures[2].done() and futures[3].done()  # beyond max_pending: refused at once, the device falls back
    t0 = time.perf_counter()
    release.set()
    reasons = []
    for f in futures:
        with pytest.raises(LinkError) as e:
            f.result(timeout=60)
        reasons.append(e.value.reason)
    link.close()
    assert reasons == ["http_503", "http_503", "backlog", "backlog"]
    assert time.perf_counter() - t0 < 20  # Retry-After: 30 lies beyond the 0.5 s deadline: no retry, no 30 s sleep


# ----------------------------------------------------------------------------- streams against a real server


@pytest.fixture
def stream_data(tmp_path, fake) -> str:
    root = fake.make_camvid(tmp_path / "camvid", {"train": 1, "val": 12})
    return f"camvid:{root}"


def runtime_for(url: str, token: str, policy: str = "all", rate: float = 1.0, u: UncertaintyMatrix | None = None, retry=FAST) -> DeviceRuntime:
    link = HttpLink(url, token, retry=retry)
    device_id = link.whoami()
    return DeviceRuntime(tiny_device(), make_policy(policy, u), make_controller(BudgetSpec(rate=rate)), link, device_id=device_id,
                         send_device_probs=True, uncertainty=u)


def test_server_killed_mid_stream_every_frame_answered(stream_data):
    dataset = open_dataset(stream_data, "val")
    service = CloudService(ModelSegmenter(tiny_cloud()), CAMVID, dcam_alpha=0.5, initial_u=np.eye(C))
    server = ServerThread(create_app(service, TokenMap.parse(TOKENS), Limits(), BatchConfig(max_wait_ms=2)))
    url = server.start()
    retry = RetryPolicy(attempts=2, backoff_s=0.02, timeout_s=20.0, deadline_s=25.0)  # generous: a slow CI box is not a dead server
    runtime = runtime_for(url, TOK1, u=UncertaintyMatrix(np.eye(C), CAMVID), retry=retry)
    seen = []

    def on_frame() -> None:
        seen.append(1)
        if len(seen) == 5:
            server.stop()  # the cloud dies; the device must go on

    result = run_stream(dataset, runtime, len(dataset), StreamConfig(deadline_s=30.0, max_lag=2), on_frame=on_frame)
    runtime.close()
    assert result["answered"] == result["frames"] == 12
    assert result["from_cloud"] + result["fallbacks"] == 12 and result["uploads"] == 12
    assert result["from_cloud"] >= 1 and result["fallbacks"] >= 1
    assert all(k.startswith("fallback:") for k in result["fallback_reasons"])
    failures = runtime.link.stats.summary()["failures"]
    assert set(failures) <= {"connect", "network", "timeout", "closed"} and sum(failures.values()) >= 1


@pytest.fixture
def collab_setup(tmp_path, stream_data):
    dev = save_tiny(tmp_path / "dev", "device")
    cloud = save_tiny(tmp_path / "cloud", "cloud")
    rng = np.random.default_rng(0)
    a = rng.normal(size=(C, C))
    u_path = UncertaintyMatrix((a + a.T) / 2, CAMVID).save(tmp_path / "u.safetensors")
    return stream_data, dev, cloud, u_path


def collab_numbers(data, dev, cloud, u_path, policy, rate, alpha) -> dict:
    from tandemseg.models.checkpoint import load_checkpoint

    dataset = open_dataset(data, "val")
    dm, cm = load_checkpoint(dev).model, load_checkpoint(cloud).model
    um = UncertaintyMatrix.load(u_path, expect_classes=CAMVID)
    cache = K_.build_cache(dataset, dm, cm, "png", None, True)
    run = R_.PolicyRun(policy, BudgetSpec(rate=rate, mode="sa"), um, 0, alpha)  # "sa": no warm-up, so a 12-frame stream uploads
    return C_.run_runtime(dataset, cache, run, dm, cm, "png", None, True)


@pytest.mark.parametrize("alpha, max_lag", [(0.5, 0), (0.0, 8)])
def test_device_over_http_agrees_with_collab(collab_setup, alpha, max_lag):
    data, dev, cloud, u_path = collab_setup
    expected = collab_numbers(data, dev, cloud, u_path, "acdc", 0.4, alpha)
    um = UncertaintyMatrix.load(u_path)
    from tandemseg.models.checkpoint import load_checkpoint

    cloud_model = load_checkpoint(cloud).model  # the very weights collab used (checkpoints store float16)
    service = CloudService(ModelSegmenter(cloud_model), CAMVID, dcam_alpha=alpha, initial_u=np.full((C, C), 7.0))  # the device PUTs its own U
    with running_server(create_app(service, TokenMap.parse(TOKENS), Limits(), BatchConfig(max_wait_ms=2))) as url:
        got = run_device_client(url, TOK2, data, "val", "clean", dev, u_path, "acdc", 0.4, "sa", None, 10.0, "png", True, None, 0,
                                PATIENT, StreamConfig(deadline_s=120.0, max_lag=max_lag))
    assert got["fallbacks"] == 0 and got["answered"] == 12 and got["device_id"] == "dev2"
    assert got["uploaded_frames"] == np.flatnonzero(expected["mask"]).tolist()  # the same decision on every frame
    assert got["collab_miou"] == pytest.approx(expected["collab_miou"], abs=1e-12)
    if alpha > 0:
        assert got["u_version"] == expected["u_version"] and got["u_updates_applied"] >= 1
    assert np.array_equal(um.u, UncertaintyMatrix.load(u_path).u)  # the file itself is never changed


def test_device_cli_writes_the_documented_json(collab_setup, tmp_path, monkeypatch):
    data, dev, cloud, u_path = collab_setup
    service = CloudService(ModelSegmenter(tiny_cloud()), CAMVID, dcam_alpha=0.5, initial_u=np.eye(C))
    out = tmp_path / "device.json"
    with running_server(create_app(service, TokenMap.parse(TOKENS), Limits(), BatchConfig(max_wait_ms=2))) as url:
        monkeypatch.setenv("TANDEMSEG_TOKEN", TOK1)
        r = CliRunner().invoke(cli_app, ["device", "--server", url, "--timeout-s", "60", "--deadline-ms", "120000",
                                         "--data", data, "--split", "val", "--device-ckpt", str(dev),
                                         "--uncertainty", str(u_path), "--policy", "acdc", "--rate", "0.3", "--controller", "sa", "--limit", "10",
                                         "--cloud-ckpt", str(cloud), "--json", str(out)])
    assert r.exit_code == 0, r.output
    p = json.loads(out.read_text())
    for key in ("device_miou", "cloud_miou", "collab_miou", "oracle_miou", "upload_rate", "bytes_up_per_frame", "bytes_down_per_frame",
                "rtt_ms_p50", "rtt_ms_p95", "rtt_ms_p99", "fallbacks", "fallback_reasons", "from_cloud", "u_updates_applied",
                "provenance", "device_ms", "policy", "target_rate"):
        assert key in p, key
    assert p["frames"] == 10 and p["from_cloud"] + p["fallbacks"] == p["uploads"] and p["rtt_ms_p50"] is not None


def test_device_cli_refuses_a_wrong_token(collab_setup):
    data, dev, _, u_path = collab_setup
    service = CloudService(ModelSegmenter(tiny_cloud()), CAMVID)
    with running_server(create_app(service, TokenMap.parse(TOKENS), Limits())) as url:
        r = CliRunner().invoke(cli_app, ["device", "--server", url, "--token", "nobody-knows-me", "--data", data, "--device-ckpt", str(dev),
                                         "--policy", "all", "--limit", "2"])
    assert r.exit_code != 0 and "401" in str(r.exception or r.output)


def test_link_stats_keep_a_bounded_window_of_round_trips():
    from tandemseg.device.http_link import RTT_WINDOW, LinkStats

    stats = LinkStats()
    for i in range(RTT_WINDOW + 500):
        stats.ok_rtt(float(i))
    assert len(stats.rtt_ms) == RTT_WINDOW and stats.rtt_ms[0] == 500.0  # the oldest dropped first
    assert stats.summary()["rtt_ms_p50"] > 500


@pytest.mark.parametrize("fault", ["delay", "reset", "truncate"])
def test_network_faults_between_device_and_server_never_lose_a_frame(fault: str) -> None:
    """A proxy on loopback injects the fault on every other connection; every frame still gets a final map, the
    faulty ones fall back to the device's own with a reason, and the clean ones come from the cloud."""
    from _proxy import FaultProxy

    service = CloudService(ModelSegmenter(tiny_cloud()), CAMVID)
    app = create_app(service, TokenMap.parse(TOKENS), Limits(max_inflight_per_device=16), BatchConfig(max_batch=2, max_wait_ms=5))
    retry = RetryPolicy(attempts=1, timeout_s=1.0, deadline_s=1.5)
    with running_server(app) as url:
        host, port = url.removeprefix("http://").split(":")
        with FaultProxy((host, int(port)), lambda n: fault if n % 2 else "pass", delay_s=3.0) as proxy:
            frames = [np.random.default_rng(i).integers(0, 256, (32, 48, 3), dtype=np.uint8) for i in range(6)]
            results = []
            for i, f in enumerate(frames):  # a fresh link per frame: one connection each, so the schedule alternates
                link = HttpLink(proxy.url, TOK1, device_id="dev1", retry=retry, max_inflight=1)
                rt = DeviceRuntime(tiny_device(), make_policy("all"), make_controller(BudgetSpec(rate=1.0)), link, device_id="dev1")
                t0 = time.perf_counter()
                results.append((rt.finish(rt.process(f, i), timeout=2.5), time.perf_counter() - t0))
                rt.close()
    assert all(r.label is not None and r.label.shape == (32, 48) for r, _ in results)  # 0 frames lost
    provenance = [r.provenance for r, _ in results]
    assert provenance[0::2] == ["cloud"] * 3, provenance
    assert all(p.startswith("fallback:") for p in provenance[1::2]), provenance
    assert all(seconds < 2.6 for _, seconds in results)  # the frame's deadline holds, whatever the network does
