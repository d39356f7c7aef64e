"""A short round trip through Ray Serve on a local Ray instance (marked `ray`; `.ci/run` runs it like every test).

The Ray-free parts (SegmenterImpl, the shared DeviceStateStore) are tested without Ray first, so a failure says
which half broke; one test then starts Ray (1 CPU, no dashboard), deploys the app and talks HTTP to it.
"""

from __future__ import annotations

import os
import socket
import time

import numpy as np
import pytest
from _service_helpers import TOK1, TOKENS, C, save_tiny, upload

from tandemseg.cloud.dcam import Dcam, DcamSettings, dcam_update
from tandemseg.data.classes import CAMVID
from tandemseg.wire.payload import decode_label_png, unpack_probs


def test_split_dcam_matches_the_plain_service(tmp_path):
    """Evidence on a replica + blend in the state owner == one dcam_update per frame (as the plain service does)."""
    pytest.importorskip("ray.serve")  # ray is the optional `ray` extra (installed by `make test` via dev)
    from tandemseg.cloud.ray_app import SegmenterImpl
    from tandemseg.cloud.states import DeviceStateStore

    ckpt = save_tiny(tmp_path / "cloud", "cloud")
    settings = DcamSettings(stats="set", lam=0.7)
    dcam = Dcam(0.5, settings)
    seg = SegmenterImpl(str(ckpt), dcam)
    states = DeviceStateStore(C, np.eye(C), dcam)
    reqs = [upload("dev1", i, seed=i) for i in range(3)]
    u = np.eye(C)
    for req, (reply, evidence) in zip(reqs, seg.segment(reqs), strict=True):
        got, version = states.record("dev1", 0, evidence)
        u, _ = dcam_update(u, unpack_probs(req.device_probs, req.device_probs_shape), decode_label_png(reply.label_png), 0.5,
                           settings=settings)
        assert got is not None and np.allclose(got, u, atol=1e-6)
    assert states.get("dev1")["frames"] == 3 and states.get("dev2")["u_version"] == 0
    bad = upload("dev1", 9)
    bad.payload = b"not an image"
    out = seg.segment([upload("dev1", 8), bad])
    assert isinstance(out[1], Exception) and not isinstance(out[0], Exception)  # the bad frame fails alone
    assert getattr(out[1], "status", 400) == 400  # the frame's own fault: a 400


def test_a_cloud_fault_is_a_retryable_503_not_a_400(tmp_path, monkeypatch):
    """Out of memory (or any fault of the cloud's) must not tell the client its frame was bad."""
    pytest.importorskip("ray.serve")
    from tandemseg.cloud.ray_app import SegmenterImpl

    seg = SegmenterImpl(str(save_tiny(tmp_path / "cloud", "cloud")), Dcam(0.0, DcamSettings()))

    def out_of_memory(requests):
        raise MemoryError("cannot allocate")

    monkeypatch.setattr(seg.service, "segment", out_of_memory)
    out = seg.segment([upload("dev1", 0), upload("dev1", 1)])
    assert all(getattr(o, "status", None) == 503 and "retry" in str(o) for o in out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ray
@pytest.mark.slow
def test_ray_serve_round_trip(tmp_path, monkeypatch):
    pytest.importorskip("ray.serve")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # a throwaway local instance needs no cluster token
    from ray import serve

    from tandemseg.cloud.adaptation.config import AdaptConfig
    from tandemseg.cloud.app import Limits
    from tandemseg.cloud.auth import TokenMap
    from tandemseg.cloud.ray_app import RayOptions, build_ray_app, start_ray, stop_ray
    from tandemseg.device.http_link import HttpLink, RetryPolicy
    from tandemseg.device.weights import WeightUpdater
    from tandemseg.models.checkpoint import load_checkpoint

    ckpt = save_tiny(tmp_path / "cloud", "cloud")
    device_ckpt = save_tiny(tmp_path / "device", "device")
    port = _free_port()
    adapt = (str(device_ckpt), AdaptConfig(batch=2, replay=0, adapt_scale=1.0))  # CEMA as its own deployment
    app = build_ray_app(str(ckpt), TokenMap.parse(TOKENS), Limits(), 0.5, np.eye(C), RayOptions(replicas=1, replica_cpus=0, threads=1),
                        adapt=adapt)
    start_ray(None, "127.0.0.1", port, num_cpus=1)
    try:
        serve.run(app, blocking=False, route_prefix="/")
        link = HttpLink(f"http://127.0.0.1:{port}", TOK1, retry=RetryPolicy(timeout_s=60, deadline_s=120))
        try:
            assert link.health()["classes"] == C
            replies = [link.submit(upload("dev1", i, seed=i)).result(timeout=180) for i in range(2)]
            assert [r.frame_id for r in replies] == [0, 1]
            assert decode_label_png(replies[0].label_png).shape == (32, 48)
            assert max(r.u_version for r in replies) >= 1 and replies[0].u_matrix is not None  # DCAM through DeviceStates
            state = link.get_state()
            assert state["device_id"] == "dev1" and state["frames"] == 2
            message = None
            for _ in range(120):  # the Adaptation actor's worker adapts on the two uploads in the background
                message = link.fetch_update("dev1", 0)
                if message is not None:
                    break
                time.sleep(0.5)
            assert message is not None and message.version == 1
            assert WeightUpdater(load_checkpoint(device_ckpt).model, "dev1").offer(message)
        finally:
            link.close()
    finally:
        stop_ray()
    assert CAMVID.num_classes == C
    assert not os.environ.get("RAY_ADDRESS")  # nothing leaked into the environment for later tests
