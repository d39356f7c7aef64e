"""CEMA (paper 002): cloud adaptation, distillation, the weight push and its checks, the device-side baselines,
and the harness, on tiny models and synthetic frames; the weight route over a real loopback server."""

from __future__ import annotations

import hashlib
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from _service_helpers import TOK1, TOK2, TOKENS, C, frame, tiny_cloud, tiny_device, upload

from tandemseg.cloud.adaptation.adapter import Adapter
from tandemseg.cloud.adaptation.config import AdaptConfig
from tandemseg.cloud.adaptation.replay import ReplayBuffer
from tandemseg.cloud.adaptation.service import AdaptationService
from tandemseg.cloud.app import Limits, create_app, running_server
from tandemseg.cloud.auth import TokenMap
from tandemseg.cloud.batching import BatchConfig
from tandemseg.cloud.service import CloudService, ModelSegmenter
from tandemseg.data.classes import CAMVID
from tandemseg.data.shifts.continual import continual_stream, parse_continual
from tandemseg.data.shifts.registry import CORRUPTIONS
from tandemseg.data.synthetic import SyntheticScenes
from tandemseg.device.http_link import HttpLink
from tandemseg.device.local_adapt import local_step
from tandemseg.device.weights import WeightUpdater
from tandemseg.errors import SpecError
from tandemseg.eval.adaptation import AdaptSetup, run_adaptation
from tandemseg.models.adaptation import (
    adapted_parameters,
    adapted_state_names,
    distillation_loss,
    reliability_weight,
)
from tandemseg.wire import http as wire
from tandemseg.wire.weights import UpdateMessage, encode_update

pytestmark = pytest.mark.usefixtures("one_thread")
H, W = 32, 48
CFG = AdaptConfig(batch=2, replay=2, adapt_scale=1.0, student_lr=1e-2, foundation_lr=1e-3)


def frames(n: int, seed: int = 0) -> list[np.ndarray]:
    return [frame(seed + i, H, W) for i in range(n)]


def adapted_student(steps: int = 2) -> Adapter:
    adapter = Adapter(tiny_cloud(), tiny_device(), C, CFG)
    for k in range(steps):
        adapter.step(frames(2, seed=10 * k))
    return adapter


def test_distillation_lowers_the_kl_to_the_teacher() -> None:
    torch.manual_seed(0)
    teacher = tiny_cloud()
    with torch.no_grad():
        teacher.classifier.weight.mul_(30)  # a confident teacher: a random tiny one is nearly uniform
    config = AdaptConfig(batch=4, replay=0, adapt_scale=1.0, student_lr=5e-3, foundation_lr=0.0, params="all")
    adapter = Adapter(teacher, tiny_device(), C, config)
    x = torch.from_numpy(np.stack(frames(4))).permute(0, 3, 1, 2).float() / 255  # (4, 3, H, W)

    def kl() -> float:  # KL(teacher || student) as the objective sees them (BatchNorm on running statistics by default)
        with torch.no_grad():
            s = adapter.student.eval().forward_coarse(x)
            t = torch.nn.functional.interpolate(adapter.foundation.eval()(x), size=s.shape[-2:], mode="bilinear", align_corners=False)
            return float((t.softmax(1) * (t.log_softmax(1) - s.log_softmax(1))).sum(1).mean())

    before = kl()
    for _ in range(15):
        adapter.step(frames(4))
    assert kl() < 0.9 * before


def test_reliability_weight_and_objective_shapes() -> None:
    e = torch.tensor([0.0, np.log(C)])
    w = reliability_weight(e, C, 0.4)
    assert w[0] > 1 > w[1]  # confident frames count more than E_0, uncertain ones less
    s, t = torch.randn(2, C, 4, 6, requires_grad=True), torch.randn(2, C, 8, 12)
    loss = distillation_loss(s, t, 1.0, 1.0, 0.4)
    loss.backward()
    assert loss.ndim == 0 and s.grad is not None and torch.isfinite(s.grad).all()


def test_a_delta_applied_to_the_base_reproduces_the_clouds_student_exactly() -> None:
    adapter = adapted_student()
    device = tiny_device()
    updater = WeightUpdater(device, "dev1")
    version, tensors = adapter.snapshot
    message = encode_update("dev1", version, adapter.base_hash, tensors)
    assert updater.offer(message)
    ours, theirs = device.state_dict(), adapter.student.state_dict()
    changed = [k for k in ours if not torch.equal(ours[k], tiny_device().state_dict()[k])]
    assert changed and set(changed) <= set(tensors)  # only adapted tensors moved, and they did
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if k.split(".")[-1] != "num_batches_tracked")
    assert set(tensors) == set(adapted_parameters(device)) and "classifier.weight" not in tensors  # a delta, not the model
    batch_norm = Adapter(tiny_cloud(), tiny_device(), C, AdaptConfig(student_norm="batch"))
    assert set(batch_norm.names) == set(adapted_state_names(device))  # Tent-style: the running statistics travel too


def test_bad_updates_are_refused_and_the_device_keeps_its_weights() -> None:
    adapter = adapted_student()
    version, tensors = adapter.snapshot
    good = encode_update("dev1", version, adapter.base_hash, tensors)
    device = tiny_device()
    before = {k: v.clone() for k, v in device.state_dict().items()}
    updater = WeightUpdater(device, "dev1")
    flipped = bytearray(good.payload)
    flipped[-5] ^= 0xFF
    name = next(iter(tensors))
    bad_shape = dict(tensors, **{name: torch.zeros(tensors[name].numel() + 1)})
    refusals = {
        "tampered": UpdateMessage(bytes(flipped), good.sha256, version),
        "wrong base": encode_update("dev1", version, "0" * 64, tensors),
        "wrong shape": encode_update("dev1", version, adapter.base_hash, bad_shape),
        "other device": encode_update("dev2", version, adapter.base_hash, tensors),
        "foreign tensor": encode_update("dev1", version, adapter.base_hash, {"classifier.weight": device.state_dict()["classifier.weight"]}),
        "truncated": UpdateMessage(good.payload[:40], hashlib.sha256(good.payload[:40]).hexdigest(), version),
    }
    for why, message in refusals.items():
        assert not updater.offer(message), why
        assert updater.stats.last_error
    assert updater.stats.rejected == len(refusals) and updater.version == 0
    assert all(torch.equal(before[k], v) for k, v in device.state_dict().items())


def test_rollback_restores_the_previous_weights_bit_for_bit() -> None:
    adapter = adapted_student()
    version, tensors = adapter.snapshot
    device = tiny_device()
    before = {k: v.clone() for k, v in device.state_dict().items()}
    updater = WeightUpdater(device, "dev1", watch=3, rollback_factor=1.5)
    for _ in range(3):
        updater.observe(0.2)
    assert updater.offer(encode_update("dev1", version, adapter.base_hash, tensors))
    assert not all(torch.equal(before[k], v) for k, v in device.state_dict().items())
    assert not updater.observe(0.5) and not updater.observe(0.5)
    assert updater.observe(0.5)  # mean entropy 0.5 > 1.5 * 0.2 after the update: roll back
    assert all(torch.equal(before[k], v) for k, v in device.state_dict().items())
    assert updater.stats.rolled_back == 1 and updater.version == version  # the refused version is not fetched again


def test_replay_buffer_bounds_frames_and_bytes() -> None:
    f = frame(0, H, W)
    fifo = ReplayBuffer(max_frames=3, max_bytes=10 * f.nbytes, eviction="fifo")
    small = ReplayBuffer(max_frames=100, max_bytes=2 * f.nbytes + 1, eviction="reservoir")
    for i in range(10):
        fifo.add(frame(i, H, W))
        small.add(frame(i, H, W))
        assert len(fifo) <= 3 and small.nbytes <= 2 * f.nbytes + 1
    assert np.array_equal(fifo.frames[0], frame(7, H, W))  # the oldest went first
    assert len(fifo.sample(5)) == 3


def test_config_rejects_unknown_and_bad_options() -> None:
    assert AdaptConfig.from_options({"batch": "8", "eviction": "reservoir"}).batch == 8
    with pytest.raises(SpecError, match="valid: params"):
        AdaptConfig.from_options({"batchsize": "8"})
    with pytest.raises(SpecError, match="fifo, reservoir"):
        AdaptConfig(eviction="lru")


def test_continual_stream_plays_the_split_under_each_corruption() -> None:
    assert parse_continual("continual:3")[1] == CORRUPTIONS and parse_continual("continual:5:fog,snow") == (5, ("fog", "snow"))
    for bad in ("continual:x", "continual:6", "continual:3:sunshine", "stream:3"):
        with pytest.raises(SpecError):
            parse_continual(bad)
    scenes = SyntheticScenes("val", size=(H, W), frames=5)
    stream = continual_stream(scenes, "continual:3:fog,gaussian_noise", frames_per_condition=3)
    assert len(stream) == 6 and [str(stream.condition_at(i)) for i in (0, 2, 3, 5)] == ["fog:3", "fog:3", "gaussian_noise:3", "gaussian_noise:3"]
    assert np.array_equal(stream[4].label, scenes[1].label)


def test_device_side_tent_changes_only_norm_parameters() -> None:
    model = tiny_device()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step = local_step(model, "tent", lr=1e-2)
    out = step.run(frame(0, H, W), 0)
    assert out.pred.shape == (H, W)
    moved = [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]
    assert moved and set(moved) <= set(adapted_parameters(model)) | {k for k in moved if k.endswith("num_batches_tracked")}, moved
    assert torch.equal(before["classifier.weight"], model.state_dict()["classifier.weight"])
    with pytest.raises(SpecError, match="bn, tent"):
        local_step(model, "cotta")


def test_harness_runs_every_method_through_the_runtime() -> None:
    scenes = SyntheticScenes("val", size=(H, W), frames=4)
    stream = continual_stream(scenes, "continual:2:fog,contrast", frames_per_condition=4)
    setup = AdaptSetup(tiny_device(), tiny_cloud(), CFG, device_id="dev1", window=4)
    runs = {m: run_adaptation(m, stream, setup) for m in ("none", "bn", "tent", "cema", "upload-all")}
    for m in ("none", "bn", "tent"):
        assert runs[m]["uploads"] == 0 and runs[m]["bytes_down"] == 0 and runs[m]["updates_applied"] == 0
    assert runs["none"]["device_miou"] == pytest.approx(runs["none"]["final_device_miou"])  # nothing adapted
    full = runs["upload-all"]
    assert full["uploads"] == 8 and full["updates_applied"] == 4 and full["bytes_down"] > 0  # one update per batch of 2
    assert runs["cema"]["uploads"] <= 8 and set(full["per_condition"]) == {"fog:2", "contrast:2"}
    assert len(full["curve"]["miou"]) == 2
    assert torch.equal(setup.device_model.state_dict()["classifier.weight"], tiny_device().state_dict()["classifier.weight"])


@pytest.fixture(scope="module")
def adapting_server():
    service = AdaptationService(tiny_cloud(), tiny_device(), C, AdaptConfig(batch=2, replay=0, adapt_scale=1.0))
    cloud = CloudService(ModelSegmenter(tiny_cloud()), CAMVID, adaptation=service)
    app = create_app(cloud, TokenMap.parse(TOKENS), Limits(max_inflight_per_device=16), BatchConfig(max_batch=4, max_wait_ms=10))
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield url, client, service
    service.close()


def test_segment_replies_never_wait_for_adaptation(adapting_server, monkeypatch) -> None:
    url, client, service = adapting_server
    release = threading.Event()
    real_step = Adapter.step

    def blocked_step(self, batch):
        release.wait(20)
        return real_step(self, batch)

    monkeypatch.setattr(Adapter, "step", blocked_step)
    for i in range(4):
        headers, body = wire.encode_request(upload("dev1", i, probs=False, seed=i), TOK1)
        t0 = time.perf_counter()
        r = client.post(wire.SEGMENT_PATH, content=body, headers=headers)
        assert r.status_code == 200 and time.perf_counter() - t0 < 5  # answered while the step is blocked
    assert client.get("/v1/devices/dev1/model", headers={"Authorization": f"Bearer {TOK1}"}).status_code == 204  # nothing yet
    release.set()
    deadline = time.time() + 30
    while service.version("dev1") < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert service.version("dev1") == 2


def test_the_weight_route_serves_only_the_owner_and_the_device_applies_it(adapting_server) -> None:
    url, client, service = adapting_server
    deadline = time.time() + 30
    for i in range(2):
        headers, body = wire.encode_request(upload("dev1", 100 + i, probs=False, seed=i), TOK1)
        assert client.post(wire.SEGMENT_PATH, content=body, headers=headers).status_code == 200
    while service.version("dev1") < 1 and time.time() < deadline:
        time.sleep(0.05)
    own = {"Authorization": f"Bearer {TOK1}"}
    r = client.get("/v1/devices/dev1/model", params={"since": 0}, headers=own)
    assert r.status_code == 200 and int(r.headers[wire.H_MODEL_VERSION]) == service.version("dev1")
    for path, headers, status in [
        ("/v1/devices/dev1/model", {"Authorization": f"Bearer {TOK2}"}, 403),  # another device's token
        ("/v1/devices/dev1/model", {}, 401),
        ("/v1/devices/dev1/model?since=-1", own, 400),
        ("/v1/devices/dev1/model?since=abc", own, 400),
    ]:
        bad = client.get(path, headers=headers)
        assert bad.status_code == status and "error" in bad.json(), (path, bad.status_code, bad.text)
    assert client.get("/v1/devices/dev1/model", params={"since": 10**6}, headers=own).status_code == 204
    device = tiny_device()
    link = HttpLink(url, TOK1, "dev1")
    try:
        message = link.fetch_update("dev1", 0)
        assert WeightUpdater(device, "dev1").offer(message)
        assert not WeightUpdater(tiny_device(), "dev2").offer(link.fetch_update("dev1", 0))  # not for dev2
    finally:
        link.close()
