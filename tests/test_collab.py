"""Collaborative evaluation: payload codecs, the cloud service, the runtime + in-process link, the cached
sweeps (which must agree with the runtime), the oracle bound, and the `collab`/`fit-uncertainty` CLI."""

from __future__ import annotations

import json
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny import run_main

from tandemseg.cloud.service import CloudService
from tandemseg.data.base import Sample
from tandemseg.data.classes import CAMVID
from tandemseg.device.budget import BudgetSpec, WindowController
from tandemseg.device.link import InProcessLink
from tandemseg.device.policies import make_policy
from tandemseg.device.runtime import DeviceRuntime
from tandemseg.device.uncertainty import UncertaintyMatrix
from tandemseg.eval import collab as C
from tandemseg.models.checkpoint import save_checkpoint
from tandemseg.models.registry import build_model
from tandemseg.wire import payload as W
from tandemseg.wire.messages import UploadRequest

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
TINY_DEVICE = {"stem_channels": 8, "head_channels": 16, "skip_channels": 8,
               "stages": [["stage1", 2, 8, 1, 2, 1], ["stage2", 2, 8, 1, 2, 1], ["stage3", 2, 16, 1, 2, 1], ["stage4", 2, 16, 1, 1, 2]]}
TINY_CLOUD = {"stem_channels": 8, "aspp_channels": 16, "decoder_channels": 16, "skip_channels": 8, "aspp_rates": [2, 4],
              "stages": [["layer1", 8, 1, 1, 1], ["layer2", 16, 1, 2, 1], ["layer3", 16, 1, 2, 1], ["layer4", 16, 1, 1, 2]]}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return build_model("device", TINY_DEVICE).eval(), build_model("cloud", TINY_CLOUD).eval()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, models):
    root = tmp_path_factory.mktemp("ckpt")
    dev, cloud = models
    save_checkpoint(root / "dev", dev, "device", CAMVID, data="synthetic", recipe="test")
    save_checkpoint(root / "cloud", cloud, "cloud", CAMVID, data="synthetic", recipe="test")
    return root / "dev", root / "cloud"


class SmallStream:
    """A labelled stream of small random-ish frames (two sizes, so the service's grouping is exercised)."""

    classes = CAMVID
    split = "val"

    def __init__(self, n: int = 24, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.samples = []
        for i in range(n):
            h, w = (48, 64) if i % 5 else (40, 56)
            base = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
            img = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))  # blocky scenes: structure for the models
            label = rng.integers(0, 11, (h // 8, w // 8))
            label = np.kron(label, np.ones((8, 8), dtype=np.int64))
            label[0, :5] = 255
            self.samples.append(Sample(img, label, f"f{i}"))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]


@pytest.fixture(scope="module")
def stream_cache(models):
    dev, cloud = models
    ds = SmallStream()
    return ds, C.build_cache(ds, dev, cloud, "png")


@pytest.fixture(scope="module")
def u_matrix():
    u = np.random.default_rng(0).normal(size=(11, 11))
    return UncertaintyMatrix(u + u.T, CAMVID)


# ----------------------------------------------------------------------------- payloads


def test_frame_codecs_round_trip() -> None:
    img = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    assert np.array_equal(W.decode_frame(W.encode_frame(img, "png"), "png"), img)
    for codec in ("jpeg:90", "webp:80"):
        back = W.decode_frame(W.encode_frame(img, codec), codec)
        assert back.shape == img.shape
    smooth = np.kron(img[:3, :4], np.ones((10, 10, 1), dtype=np.uint8))
    assert len(W.encode_frame(smooth, "jpeg:50")) < len(W.encode_frame(smooth, "jpeg:95"))
    with pytest.raises(W.PayloadError, match="PNG but the request says codec jpeg:90"):
        W.decode_frame(W.encode_frame(img, "png"), "jpeg:90")
    with pytest.raises(W.PayloadError, match="cannot decode"):
        W.decode_frame(b"not an image")


@pytest.mark.parametrize("bad", ["gif", "jpeg", "jpeg:0", "jpeg:x", "png:5", "webp:101"])
def test_bad_codecs_are_rejected(bad: str) -> None:
    from tandemseg.errors import SpecError

    with pytest.raises(SpecError):
        W.parse_codec(bad)


def test_label_and_probs_payloads() -> None:
    label = np.random.default_rng(1).integers(0, 11, (20, 30))
    assert np.array_equal(W.decode_label_png(W.encode_label_png(label)), label)
    probs = torch.rand(11, 6, 8).softmax(0).numpy()
    data, shape = W.pack_probs(probs)
    back = W.unpack_probs(data, shape)
    assert back.shape == probs.shape and np.abs(back - probs).max() < 0.01
    with pytest.raises(W.PayloadError, match="needs"):
        W.unpack_probs(data, (11, 6, 9))


# ----------------------------------------------------------------------------- service, link, runtime


def request(img: np.ndarray, frame_id: int, device_id: str = "d", **kw) -> UploadRequest:
    return UploadRequest(device_id, frame_id, W.encode_frame(img, "png"), "png", img.shape[0], img.shape[1], **kw)


def test_service_batches_by_size_and_matches_single_forward(models) -> None:
    _, cloud = models
    ds = SmallStream(6)
    service = CloudService(cloud, CAMVID)
    replies = service.segment_batch([request(s.image, i) for i, s in enumerate(ds.samples)])
    assert [r.frame_id for r in replies] == list(range(6))
    for s, r in zip(ds.samples, replies, strict=True):
        label = W.decode_label_png(r.label_png)
        with torch.inference_mode():
            ref = cloud(torch.from_numpy(s.image).permute(2, 0, 1)[None].float() / 255).argmax(1)[0].numpy()
        assert label.shape == s.image.shape[:2]
        assert (label == ref).mean() > 0.999  # batched vs single forward: equal up to float ties


def test_service_dcam_updates_per_device(models, monkeypatch) -> None:
    _, cloud = models
    calls = []

    def fake_dcam(u, probs, pseudo, alpha, ignore_index=255):
        calls.append((probs.shape, pseudo.shape, alpha))
        return u + 1.0, True

    monkeypatch.setattr("tandemseg.cloud.service.dcam_update", fake_dcam)
    service = CloudService(cloud, CAMVID, dcam_alpha=0.5, initial_u=np.zeros((11, 11)))
    img = SmallStream(1).samples[0].image
    data, shape = W.pack_probs(torch.full((11, 3, 4), 1 / 11).numpy())
    r1 = service.segment_batch([request(img, 0, "a", device_probs=data, device_probs_shape=shape)])[0]
    assert r1.u_version == 1 and r1.u_matrix[0, 0] == 1.0
    r2 = service.segment_batch([request(img, 1, "b")])[0]  # no probs, fresh device: nothing to send
    assert r2.u_matrix is None
    assert service.device_state("a")["u_version"] == 1 and service.device_state("b")["u_version"] == 0
    assert calls == [((11, 3, 4), img.shape[:2], 0.5)]


def test_runtime_uses_the_cloud_reply_and_applies_u(models, monkeypatch) -> None:
    dev, cloud = models
    monkeypatch.setattr("tandemseg.cloud.service.dcam_update", lambda u, p, y, a, ignore_index=255: (u * 2.0, True))
    um = UncertaintyMatrix(np.eye(11), CAMVID)
    service = CloudService(cloud, CAMVID, dcam_alpha=0.3, initial_u=um.u)
    rt = DeviceRuntime(dev, make_policy("all"), WindowController(0.1), InProcessLink(service), send_device_probs=True, uncertainty=um)
    s = SmallStream(1).samples[0]
    res = rt.finish(rt.process(s.image, 7))
    assert res.provenance == "cloud" and res.uploaded and res.bytes_up > 0 and res.bytes_down > 0
    assert um.version == 1 and um.u[0, 0] == 2.0 and res.u_version == 1


class FailingLink:
    def submit(self, req):
        f: Future = Future()
        f.set_exception(ConnectionError("cloud down"))
        return f

    def close(self) -> None:
        pass


class SlowLink:
    def submit(self, req):
        return Future()  # never resolves

    def close(self) -> None:
        pass


def test_runtime_falls_back_to_the_device(models) -> None:
    dev, _ = models
    s = SmallStream(1).samples[0]
    for link, reason in ((FailingLink(), "fallback:error:ConnectionError"), (SlowLink(), "fallback:timeout"), (None, "fallback:no-link")):
        rt = DeviceRuntime(dev, make_policy("all"), WindowController(0.1), link)
        h = rt.process(s.image, 0)
        res = rt.finish(h, timeout=0.01)
        assert res.provenance == reason
        assert np.array_equal(res.label, h.device.pred)
    rt = DeviceRuntime(dev, make_policy("none"), WindowController(0.1), FailingLink())
    assert rt.finish(rt.process(s.image, 1)).provenance == "device"
    from tandemseg.errors import DataError

    with pytest.raises(DataError, match="uint8"):
        rt.process(s.image.astype(np.float32), 2)


# ----------------------------------------------------------------------------- cached path, oracle, agreement


@pytest.mark.parametrize("policy", ["acdc", "entropy", "cema", "confidence", "random", "oracle", "all", "none"])
def test_runtime_path_agrees_with_cached_path(policy, models, stream_cache, u_matrix) -> None:
    dev, cloud = models
    ds, cache = stream_cache
    run = C.PolicyRun(policy, BudgetSpec(rate=0.2), u_matrix, seed=1, params={"warmup": 4} if policy == "cema" else {})
    cached, rep = C.run_cached(cache, run)
    rt = C.run_runtime(ds, cache, run, dev, cloud, "png")
    assert np.array_equal(rt["mask"], rep.mask)
    assert rt["collab_miou"] == pytest.approx(cached["collab_miou"], abs=1e-12)
    assert rt["bytes_up_per_frame"] == pytest.approx(cached["bytes_up_per_frame"])


def test_runtime_and_cache_agree_with_dcam_in_the_loop(models, stream_cache, u_matrix, monkeypatch) -> None:
    dev, cloud = models
    ds, cache = stream_cache

    def fake_dcam(u, probs, pseudo, alpha, ignore_index=255):  # deterministic, depends on what the cloud saw
        return u + alpha * float(probs[0].mean()) * np.eye(len(u)) - alpha * float((pseudo == 0).mean()), True

    monkeypatch.setattr("tandemseg.cloud.service.dcam_update", fake_dcam)
    monkeypatch.setattr("tandemseg.eval.collab.dcam_update", fake_dcam)
    cache_p = C.build_cache(ds, dev, cloud, "png", send_device_probs=True)
    run = C.PolicyRun("acdc", BudgetSpec(rate=0.25), u_matrix, dcam_alpha=0.5)
    cached, rep = C.run_cached(cache_p, run)
    rt = C.run_runtime(ds, cache_p, run, dev, cloud, "png", send_device_probs=True)
    assert rep.u_updates > 0 and rt["u_version"] == rep.u_updates
    assert np.array_equal(rt["mask"], rep.mask)
    assert rt["collab_miou"] == pytest.approx(cached["collab_miou"], abs=1e-12)


def random_cache(n: int, seed: int) -> C.CollabCache:
    """Per-frame confusion matrices only (the oracle and sweeps need nothing else)."""
    rng = np.random.default_rng(seed)
    c = 5

    def cms(diag_weight):
        m = rng.integers(0, 20, (n, c, c))
        m[:, np.arange(c), np.arange(c)] += rng.integers(0, diag_weight, (n, c))
        m[rng.random((n, c)) < 0.3] = 0  # classes absent from some frames, as in real scenes
        return m

    probs = [torch.rand(c, 4, 4, generator=torch.Generator().manual_seed(i)).softmax(0) for i in range(n)]
    from tandemseg.data.classes import ClassTable

    classes = ClassTable(tuple("abcde"), ((0, 0, 0),) * 5)
    return C.CollabCache(classes, probs, cms(60), cms(200), [np.zeros((4, 4), np.uint8)] * n, np.full(n, 1000), np.full(n, 100),
                         np.ones(n), np.ones(n), ["clean"] * n)


def test_oracle_is_at_least_every_policy() -> None:
    for seed in range(3):
        cache = random_cache(60, seed)
        um = UncertaintyMatrix(np.random.default_rng(seed).normal(size=(5, 5)), cache.classes)
        runs, labels = [], []
        for rate in (0.05, 0.1, 0.2, 0.5):
            for p in ("acdc", "entropy", "cema", "confidence", "random", "oracle"):
                runs.append(C.PolicyRun(p, BudgetSpec(rate=rate), um))
                labels.append(p)
        res = C.sweep(cache, runs, labels)
        for row in res["rows"]:
            assert row["oracle_miou"] >= row["collab_miou"] - 1e-12, row["policy"]
        assert all(abs(r["gain_captured"] - 1.0) < 1e-9 for r in res["rows"] if r["policy"] == "oracle")


def test_oracle_beats_exhaustive_search_on_small_streams() -> None:
    """On 10 frames the greedy + swap oracle finds the true best subset of size k (checked exhaustively)."""
    from itertools import combinations

    for seed in range(4):
        cache = random_cache(10, seed)
        for k in (1, 2, 3):
            best = max(C.miou_of(C.collab_cm(cache, np.isin(np.arange(10), s))) for s in combinations(range(10), k))
            got = C.miou_of(C.collab_cm(cache, C.oracle_select(cache, k)))
            assert got >= best - 1e-12


def test_sweep_plot(tmp_path, stream_cache, u_matrix) -> None:
    from tandemseg.eval.plots import plot_sweep

    _, cache = stream_cache
    runs = [C.PolicyRun(p, BudgetSpec(rate=r), u_matrix) for r in (0.1, 0.3) for p in ("acdc", "random", "oracle")]
    res = C.sweep(cache, runs)
    path = plot_sweep(res, tmp_path / "curve.png", title="t")
    assert path.stat().st_size > 1000


# ----------------------------------------------------------------------------- CLI


REQUIRED = ("device_miou", "cloud_miou", "collab_miou", "oracle_miou", "gain_captured", "upload_rate", "bytes_up_per_frame",
            "frames", "device_ms", "cloud_ms", "device_gflops", "cloud_gflops")


def test_cli_fit_then_collab_json(tmp_path, ckpts, monkeypatch, capsys) -> None:
    dev, cloud = ckpts
    u = tmp_path / "u.safetensors"
    code, _, err = run_main(monkeypatch, capsys, "fit-uncertainty", "--ckpt", str(dev), "--data", "synthetic", "--split", "train",
                            "--limit", "3", "--out", str(u), "--json", str(tmp_path / "fit.json"))
    assert code == 0, err
    um = UncertaintyMatrix.load(u, expect_classes=CAMVID)
    assert um.meta["lambda"] == 0.5 and um.meta["data"] == "synthetic" and "fit-uncertainty" in um.meta["recipe"]
    out = tmp_path / "c.json"
    code, _, err = run_main(monkeypatch, capsys, "collab", "--data", "synthetic", "--split", "val", "--device-ckpt", str(dev),
                            "--cloud-ckpt", str(cloud), "--uncertainty", str(u), "--policy", "acdc", "--rate", "0.5", "--limit", "4",
                            "--codec", "jpeg:90", "--cache-dir", str(tmp_path / "cache"), "--json", str(out))
    assert code == 0, err
    res = json.loads(out.read_text())
    for key in REQUIRED:
        assert key in res, key
    assert res["frames"] == 4 and res["paths_agree"] is True and res["codec"] == "jpeg:90"
    assert res["oracle_miou"] >= res["collab_miou"] - 1e-12
    assert res["bytes_up_per_frame"] == pytest.approx(res["uploads"] * res["bytes_up_per_upload"] / 4 if res["uploads"] else 0.0)
    # a sweep over the same stream reuses the cached device/cloud results
    code, _, err = run_main(monkeypatch, capsys, "collab", "--data", "synthetic", "--device-ckpt", str(dev), "--cloud-ckpt", str(cloud),
                            "--uncertainty", str(u), "--variant", f"again={u}", "--limit", "4", "--codec", "jpeg:90",
                            "--cache-dir", str(tmp_path / "cache"), "--sweep", "0.25,0.5", "--json", str(tmp_path / "s.json"))
    assert code == 0, err
    assert "per-frame results from" in err
    sweep = json.loads((tmp_path / "s.json").read_text())
    assert {r["policy"] for r in sweep["rows"]} >= {"acdc", "acdc:again", "entropy", "oracle", "random"}
    assert (tmp_path / "s.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "nope"], "unknown policy 'nope'; valid: acdc"),
        (["--codec", "gif"], "unknown codec 'gif'"),
        (["--rate", "2"], "upload rate must be a fraction"),
        (["--policy", "acdc"], "needs an uncertainty matrix"),
    ],
)
def test_cli_rejects_bad_input_in_one_line(args, message, ckpts, monkeypatch, capsys, tmp_path) -> None:
    dev, cloud = ckpts
    code, _, err = run_main(monkeypatch, capsys, "collab", "--device-ckpt", str(dev), "--cloud-ckpt", str(cloud), "--limit", "2",
                            "--cache-dir", str(tmp_path), *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_cli_fit_refuses_test_split(ckpts, monkeypatch, capsys, tmp_path) -> None:
    code, _, err = run_main(monkeypatch, capsys, "fit-uncertainty", "--ckpt", str(ckpts[0]), "--split", "test", "--out", str(tmp_path / "u"))
    assert code == 2 and "refused" in err


@pytest.mark.skipif(not (REPO / "checkpoints/synthetic-device/card.json").is_file()
                    or not (REPO / "checkpoints/synthetic-cloud/card.json").is_file()
                    or not (REPO / "checkpoints/synthetic-uncertainty.safetensors").is_file(),
                    reason="committed synthetic checkpoints not present")
def test_collab_with_committed_synthetic_checkpoints(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "c.json"
    code, _, err = run_main(monkeypatch, capsys, "collab", "--data", "synthetic", "--split", "val",
                            "--device-ckpt", str(REPO / "checkpoints/synthetic-device"), "--cloud-ckpt", str(REPO / "checkpoints/synthetic-cloud"),
                            "--uncertainty", str(REPO / "checkpoints/synthetic-uncertainty.safetensors"), "--policy", "acdc", "--rate", "0.25",
                            "--limit", "4", "--json", str(out))
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["paths_agree"] and res["cloud_miou"] > res["device_miou"] - 0.2
