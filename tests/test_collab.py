"""Collaborative evaluation: payload codecs, the cloud service, the runtime + in-process link, the cached
sweeps (replays of the runtime over a cache), comparisons at the target rate (greedy oracle at the target
count, paired bootstrap intervals, AUC), repeated shift schedules, and the `collab`/`fit-uncertainty` CLI.
The oracle against exhaustive search: test_oracle.py; causality of every path: test_causality.py."""

from __future__ import annotations

import json
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import torch
from _streams import dense_cache, from_cms
from _tiny import CLOUD_TINY, DEVICE_TINY, run_main

from tandemseg.cloud import dcam as D
from tandemseg.cloud.service import CloudService, ModelSegmenter
from tandemseg.data.base import Sample
from tandemseg.data.classes import CAMVID
from tandemseg.device.budget import BudgetSpec, WindowController, make_controller
from tandemseg.device.link import InProcessLink
from tandemseg.device.policies import make_policy
from tandemseg.device.runtime import DeviceRuntime
from tandemseg.device.uncertainty import UncertaintyMatrix
from tandemseg.eval import cache as K
from tandemseg.eval import collab as C
from tandemseg.eval import metrics as M
from tandemseg.eval import oracle as O
from tandemseg.eval import replay as R
from tandemseg.models.checkpoint import save_checkpoint
from tandemseg.models.registry import build_model
from tandemseg.wire import payload as W
from tandemseg.wire.messages import UploadRequest

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return build_model("device", DEVICE_TINY).eval(), build_model("cloud", CLOUD_TINY).eval()


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
    return ds, K.build_cache(ds, dev, cloud, "png")


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
    service = CloudService(ModelSegmenter(cloud), CAMVID)
    replies = service.segment_batch([request(s.image, i) for i, s in enumerate(ds.samples)])
    assert [r.frame_id for r in replies] == list(range(6))
    for s, r in zip(ds.samples, replies, strict=True):
        label = W.decode_label_png(r.label_png)
        with torch.inference_mode():
            ref = cloud(torch.from_numpy(s.image).permute(2, 0, 1)[None].float() / 255).argmax(1)[0].numpy()
        assert label.shape == s.image.shape[:2]
        assert (label == ref).mean() > 0.999  # batched vs single forward: equal up to float ties


def flag_everything(calls: list | None = None):
    """A stand-in for DCAM's evidence: every class flagged, U_new = all ones (so eq. 14 visibly moves U)."""

    def evidence(device_probs, pseudo_label, ignore_index=255, settings=None):
        if calls is not None:
            calls.append((device_probs.shape, pseudo_label.shape, settings))
        c = device_probs.shape[0]
        return D.DcamEvidence(np.ones(c, bool), np.ones((c, c)), np.zeros(c))

    return evidence


def test_service_dcam_updates_per_device(models, monkeypatch) -> None:
    _, cloud = models
    calls: list = []
    monkeypatch.setattr("tandemseg.cloud.dcam.dcam_evidence", flag_everything(calls))
    settings = D.DcamSettings(lam=0.8)
    service = CloudService(ModelSegmenter(cloud), CAMVID, dcam_alpha=0.5, initial_u=np.eye(11), dcam_settings=settings)
    img = SmallStream(1).samples[0].image
    data, shape = W.pack_probs(torch.full((11, 3, 4), 1 / 11).numpy())
    r1 = service.segment_batch([request(img, 0, "a", device_probs=data, device_probs_shape=shape)])[0]
    assert r1.u_version == 1 and r1.u_matrix is not None and not np.allclose(r1.u_matrix, np.eye(11))
    r2 = service.segment_batch([request(img, 1, "b")])[0]  # no probs, fresh device: nothing to send
    assert r2.u_matrix is None
    assert service.device_state("a")["u_version"] == 1 and service.device_state("b")["u_version"] == 0
    assert calls == [((11, 3, 4), img.shape[:2], settings)]


def test_runtime_uses_the_cloud_reply_and_applies_u(models, monkeypatch) -> None:
    dev, cloud = models
    monkeypatch.setattr("tandemseg.cloud.dcam.dcam_evidence", flag_everything())
    um = UncertaintyMatrix(np.eye(11), CAMVID)
    service = CloudService(ModelSegmenter(cloud), CAMVID, dcam_alpha=0.3, initial_u=um.u)
    rt = DeviceRuntime(dev, make_policy("all"), WindowController(0.1), InProcessLink(service), send_device_probs=True, uncertainty=um)
    s = SmallStream(1).samples[0]
    res = rt.finish(rt.process(s.image, 7))
    assert res.provenance == "cloud" and res.uploaded and res.bytes_up > 0 and res.bytes_down > 0
    assert um.version == 1 and res.u_version == 1 and not np.allclose(um.u, np.eye(11))


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


def test_replay_charges_the_recorded_bytes_and_answers_every_upload(models, stream_cache) -> None:
    """The replaying steps: policy `all` uploads every frame at its recorded size and every upload is answered."""
    _, cache = stream_cache
    rep = R.replay_run(cache, R.PolicyRun("all", BudgetSpec(rate=1.0)))
    assert rep.mask.all()
    assert C.selection_metrics(cache, rep.mask, 1.0)["bytes_up_per_frame"] == pytest.approx(cache.bytes_up.mean())


def test_replay_payload_drops_or_keeps_the_probabilities_as_the_runtime_sends_them(models, stream_cache) -> None:
    dev, cloud = models
    ds, cache = stream_cache
    with_probs = K.build_cache(ds, dev, cloud, "png", send_device_probs=True)
    plain, both = R.CachedPayload(cache), R.CachedPayload(with_probs)
    for i in range(cache.frames):
        assert both.image_bytes(i) == plain.image_bytes(i) == cache.bytes_up[i] < with_probs.bytes_up[i]
    out = R.CachedModel(with_probs).run(None, 0)
    assert R.CachedPayload(with_probs, send_device_probs=True).build(None, 0, out, 0).bytes_up == with_probs.bytes_up[0]
    with pytest.raises(ValueError, match="frame=None"):
        R.CachedModel(cache).run(ds[0].image, 0)


def test_replay_runs_dcam_with_the_settings_u_was_fitted_with(models, stream_cache, monkeypatch) -> None:
    """Real DCAM in the replay's cloud, U_new fitted as the U's metadata says (lambda 0.9, set reading, gamma 2), not
    defaults; the device's U follows the cloud's versions."""
    dev, cloud = models
    ds, _ = stream_cache
    seen = []
    real = D.dcam_evidence

    def recording(device_probs, pseudo_label, ignore_index=255, settings=D.DcamSettings()):
        seen.append(settings)
        return real(device_probs, pseudo_label, ignore_index, settings)

    monkeypatch.setattr("tandemseg.cloud.dcam.dcam_evidence", recording)
    a = np.random.default_rng(0).normal(size=(11, 11))
    um = UncertaintyMatrix(a + a.T, CAMVID, meta={"lambda": 0.9, "stats": "set", "gamma": 2.0})
    cache_p = K.build_cache(ds, dev, cloud, "png", send_device_probs=True)
    seen.clear()  # (the cache's cloud pass runs without DCAM)
    run = R.PolicyRun("acdc", BudgetSpec(rate=0.25, mode="sa"), um, dcam_alpha=0.5)
    rep = R.replay_run(cache_p, run)
    assert rep.u_updates > 0
    assert len(seen) == int(rep.mask.sum()) and set(seen) == {D.DcamSettings(stats="set", lam=0.9, gamma=2.0)}
    assert np.array_equal(um.u, a + a.T)  # the run's U was a copy


# ----------------------------------------------------------------------------- comparisons at the target rate


def under_uploader(cache: K.CollabCache, k: int) -> np.ndarray:
    """The oracle's own first k - 2 frames: a policy that picks well but uploads fewer frames than asked."""
    mask = O.greedy_oracle_select(cache, k)
    mask[np.flatnonzero(mask)[-2:]] = False
    return mask


def test_gain_captured_is_against_the_oracle_at_the_target_count() -> None:
    cache = dense_cache(40, 1)
    k = O.target_count(0.25, 40)
    m = C.selection_metrics(cache, under_uploader(cache, k), 0.25)
    at_target = M.miou_of(K.collab_cm(cache, O.greedy_oracle_select(cache, k)))
    at_achieved = M.miou_of(K.collab_cm(cache, O.greedy_oracle_select(cache, k - 2)))
    assert m["target_uploads"] == k and m["uploads"] == k - 2 and m["rate_error"] == pytest.approx(-2 / 40)
    assert m["oracle_miou"] == pytest.approx(at_target) and at_target > at_achieved
    device = m["device_miou"]
    assert m["gain_captured"] == pytest.approx((m["collab_miou"] - device) / (at_target - device))
    assert m["gain_captured"] < (m["collab_miou"] - device) / (at_achieved - device)  # no credit for the frames it skipped
    assert m["gain_over_device"] == pytest.approx(m["collab_miou"] - device)


def test_oracle_does_not_depend_on_the_policies_compared() -> None:
    """The old oracle was started from every policy's own selection; now the reference at a rate is the same
    whichever policies ride along, and the oracle policy captures exactly 100%."""
    cache = dense_cache(60, 0)
    um = UncertaintyMatrix(np.random.default_rng(0).normal(size=(5, 5)), cache.classes)
    rates = (0.05, 0.1, 0.2)

    def oracle_by_rate(policies: tuple[str, ...]) -> dict:
        runs = [R.PolicyRun(p, BudgetSpec(rate=r), um) for r in rates for p in policies]
        res = C.sweep(cache, runs, resamples=50)
        assert all(abs(r["gain_captured"] - 1.0) < 1e-12 for r in res["rows"] if r["policy"] == "oracle")
        return {(r["target_rate"], r["policy"]): r["oracle_miou"] for r in res["rows"]}

    alone = oracle_by_rate(("oracle",))
    crowd = oracle_by_rate(("acdc", "entropy", "cema", "confidence", "random", "oracle"))
    for (rate, _), value in crowd.items():
        assert value == alone[(rate, "oracle")]


def test_sweep_rows_intervals_differences_and_auc() -> None:
    cache = dense_cache(50, 3)
    um = UncertaintyMatrix(np.random.default_rng(1).normal(size=(5, 5)), cache.classes)
    rates = (0.02, 0.1, 0.2, 0.3, 0.5)
    runs = [R.PolicyRun(p, BudgetSpec(rate=r, mode="sa"), um) for r in rates for p in ("acdc", "entropy", "random")]
    res = C.sweep(cache, runs, resamples=200, seed=5)
    assert res["bootstrap"]["resamples"] == 200 and res["bootstrap"]["paired"] and "greedy" in res["oracle"]
    lo, hi = res["device_miou_ci"]
    assert lo <= res["device_miou"] <= hi
    for r in res["rows"]:
        for key in ("collab_miou", "gain_over_device", "gain_captured", "oracle_miou"):
            if key == "gain_captured" and r["target_uploads"] < 5:
                continue  # 1-2 oracle frames: many resamples draw none of them and the ratio is 0/0 (interval None)
            assert r[f"{key}_ci"] is not None and r[f"{key}_ci"][0] <= r[f"{key}_ci"][1], key
        assert {"target_rate", "upload_rate", "uploads", "target_uploads"} <= set(r)
        if r["policy"] != "random":
            vs = r["vs"]["random"]
            rand = next(x for x in res["rows"] if x["policy"] == "random" and x["target_rate"] == r["target_rate"])
            assert vs["collab_miou_delta"] == pytest.approx(r["collab_miou"] - rand["collab_miou"])
            assert vs["ci"][0] <= vs["ci"][1]
    assert "random" not in next(r for r in res["rows"] if r["policy"] == "random")["vs"]
    # AUC: the trapezoid over target rates 2-30% only (0.5 is outside), divided by the extent 0.28
    acdc = {r["target_rate"]: r["collab_miou"] for r in res["rows"] if r["policy"] == "acdc"}
    y = [acdc[x] for x in (0.02, 0.1, 0.2, 0.3)]
    expected = (0.08 * (y[0] + y[1]) + 0.1 * (y[1] + y[2]) + 0.1 * (y[2] + y[3])) / 2 / 0.28
    a = res["auc"]["policies"]["acdc"]
    assert a["auc"] == pytest.approx(expected) and a["rates"] == [0.02, 0.1, 0.2, 0.3] and a["auc_ci"][0] <= a["auc_ci"][1]
    assert a["vs"]["random"]["auc_delta"] == pytest.approx(a["auc"] - res["auc"]["policies"]["random"]["auc"])
    # seeded: the same call gives the same intervals; another bootstrap seed, others
    again = C.sweep(cache, runs, resamples=200, seed=5)
    assert again["rows"][0]["collab_miou_ci"] == res["rows"][0]["collab_miou_ci"]
    assert C.sweep(cache, runs, resamples=200, seed=6)["rows"][0]["collab_miou_ci"] != res["rows"][0]["collab_miou_ci"]


def test_paired_difference_of_identical_runs_is_exactly_zero() -> None:
    """Same draws for every run: two labels for the same selection differ by 0 in every resample."""
    cache = dense_cache(40, 4)
    runs = [R.PolicyRun("entropy", BudgetSpec(rate=0.2)), R.PolicyRun("entropy", BudgetSpec(rate=0.2))]
    res = C.sweep(cache, runs, labels=["entropy", "random"], resamples=100)
    vs = res["rows"][0]["vs"]["random"]
    assert vs["collab_miou_delta"] == 0.0 and vs["ci"] == [0.0, 0.0]
    assert res["rows"][0]["collab_miou_ci"][1] > res["rows"][0]["collab_miou_ci"][0]  # while each run alone has a spread


def test_bootstrap_resamples_source_frames_of_repeated_schedules() -> None:
    """A split played 3 times is 3 copies of each labelled frame: the interval must be that of the split's frames,
    not narrowed by pretending the copies are independent (here the copies are exact)."""
    one = dense_cache(30, 5)
    three = from_cms(np.tile(one.device_cm, (3, 1, 1)), np.tile(one.cloud_cm, (3, 1, 1)), groups=np.tile(np.arange(30), 3))
    as_frames = from_cms(three.device_cm, three.cloud_cm)  # the same stream, every copy its own sample
    width = {}
    for name, cache in (("one", one), ("three", three), ("as_frames", as_frames)):
        lo, hi = C.Evaluation.of(cache, 2000, 0).header()["device_miou_ci"]
        width[name] = hi - lo
    assert width["three"] == pytest.approx(width["one"], rel=0.1)
    assert width["as_frames"] < 0.75 * width["one"]  # ~1/sqrt(3): what ignoring the grouping would claim


def test_bytes_budget_starts_from_its_prior_on_every_path() -> None:
    """The in-process runs build the controller from the budget alone, as the HTTP device does (run.make() there
    has no cache): the stream's payload sizes never seed it."""
    small = dense_cache(20, 0)
    big = from_cms(small.device_cm, small.cloud_cm, bytes_up=np.full(20, 123_456))
    spec = BudgetSpec(rate=None, bytes_per_s=30_000, fps=10)
    states = [R.PolicyRun("entropy", spec).make(cache)[1].summary() for cache in (small, big, None)]
    assert states[0] == states[1] == states[2]
    assert states[0]["expected_bytes"] == make_controller(spec).expected_bytes


def test_sweep_plot(tmp_path, stream_cache, u_matrix) -> None:
    from tandemseg.eval.plots import plot_sweep

    _, cache = stream_cache
    runs = [R.PolicyRun(p, BudgetSpec(rate=r), u_matrix) for r in (0.1, 0.3) for p in ("acdc", "random", "oracle")]
    res = C.sweep(cache, runs)
    path = plot_sweep(res, tmp_path / "curve.png", title="t")
    assert path.stat().st_size > 1000


# ----------------------------------------------------------------------------- CLI


REQUIRED = ("device_miou", "cloud_miou", "collab_miou", "oracle_miou", "gain_captured", "upload_rate", "target_rate", "bytes_up_per_frame",
            "frames", "device_ms", "cloud_ms", "device_gflops", "cloud_gflops", "collab_miou_ci", "gain_captured_ci", "gain_over_device_ci",
            "device_miou_ci", "cloud_miou_ci", "target_uploads", "bootstrap", "oracle")


def test_cli_fit_then_collab_json(tmp_path, ckpts, monkeypatch, capsys) -> None:
    dev, cloud = ckpts
    u = tmp_path / "u.safetensors"
    code, _, err = run_main(monkeypatch, capsys, "fit-uncertainty", "--ckpt", str(dev), "--data", "synthetic", "--split", "train",
                            "--limit", "3", "--out", str(u), "--json", str(tmp_path / "fit.json"))
    assert code == 0, err
    um = UncertaintyMatrix.load(u, expect_classes=CAMVID)
    assert um.meta["lambda"] == 0.5 and um.meta["data"] == "synthetic" and "fit-uncertainty" in um.meta["recipe"]
    out = tmp_path / "c.json"
    code, stdout, err = run_main(monkeypatch, capsys, "collab", "--data", "synthetic", "--split", "val", "--device-ckpt", str(dev),
                                 "--cloud-ckpt", str(cloud), "--uncertainty", str(u), "--policy", "acdc", "--rate", "0.5", "--limit", "4",
                                 "--codec", "jpeg:90", "--cache-dir", str(tmp_path / "cache"), "--bootstrap", "200", "--json", str(out))
    assert code == 0, err
    res = json.loads(out.read_text())
    for key in REQUIRED:
        assert key in res, key
    assert res["frames"] == 4 and res["codec"] == "jpeg:90" and res["bootstrap"]["resamples"] == 200
    assert res["target_rate"] == 0.5 and res["target_uploads"] == 2
    assert res["bytes_up_per_frame"] == pytest.approx(res["uploads"] * res["bytes_up_per_upload"] / 4 if res["uploads"] else 0.0)
    assert "achieved / target" in stdout and "collab_miou %" in stdout
    # a sweep over the same stream reuses the cached device/cloud results
    from tandemseg.cli import offload

    monkeypatch.setattr(offload.out, "width", 200)  # the table at full width (rich folds headers at 80 columns)
    code, stdout, err = run_main(monkeypatch, capsys, "collab", "--data", "synthetic", "--device-ckpt", str(dev), "--cloud-ckpt", str(cloud),
                                 "--uncertainty", str(u), "--variant", f"again={u}", "--limit", "4", "--codec", "jpeg:90",
                                 "--cache-dir", str(tmp_path / "cache"), "--sweep", "0.25,0.5", "--bootstrap", "200",
                                 "--json", str(tmp_path / "s.json"))
    assert code == 0, err
    assert "per-frame results from" in err
    sweep = json.loads((tmp_path / "s.json").read_text())
    assert {r["policy"] for r in sweep["rows"]} >= {"acdc", "acdc:again", "entropy", "oracle", "random"}
    assert all(r["collab_miou_ci"] is not None and "target_rate" in r and "upload_rate" in r for r in sweep["rows"])
    assert sweep["auc"]["span"] == [0.02, 0.3] and sweep["auc"]["policies"] == {}  # one swept rate in 2-30%: no area
    assert "minus random" in stdout and "gain captured %" in stdout and "oracle = greedy search" in stdout
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_cli_collab_over_repeated_schedules(tmp_path, ckpts, monkeypatch, capsys) -> None:
    """--repeat-schedules 3 --limit 3: the split's first 3 frames under 3 seeded schedules, 9 frames from 3 sources."""
    dev, cloud = ckpts
    out = tmp_path / "r.json"
    code, stdout, err = run_main(monkeypatch, capsys, "collab", "--data", "synthetic", "--shift", "stream:fog:3,gaussian_noise:3/1",
                                 "--device-ckpt", str(dev), "--cloud-ckpt", str(cloud), "--limit", "3", "--repeat-schedules", "3",
                                 "--sweep", "0.1,0.2,0.3", "--policies", "entropy,random,oracle", "--bootstrap", "100",
                                 "--cache-dir", str(tmp_path / "cache"), "--json", str(out))
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["repeat_schedules"] == 3 and res["bootstrap"]["frames"] == 9 and res["bootstrap"]["source_frames"] == 3
    assert set(res["auc"]["policies"]) == {"entropy", "random", "oracle"}
    assert "AUC mIoU %" in stdout
    cache = K.CollabCache.load(next((tmp_path / "cache").glob("collab-*.npz")))
    assert cache.sources.tolist() == [0, 1, 2] * 3
    # pass j runs under seed j: other noise on the same frames, so the device sees other inputs
    assert not any(np.array_equal(cache.probs[i].numpy(), cache.probs[i + 3].numpy()) for i in range(3))


def test_repeated_schedules_dataset() -> None:
    from tandemseg.data.shifts.stream import RepeatedSchedules
    from tandemseg.data.spec import open_dataset

    passes = [open_dataset("synthetic", "val", "stream:fog:3,dusk/2", seed=j) for j in range(3)]
    ds = RepeatedSchedules(passes, frames_per_pass=4)
    assert len(ds) == 12 and [ds.source_index(i) for i in range(12)] == [0, 1, 2, 3] * 3
    assert np.array_equal(ds[5].image, passes[1][1].image) and np.array_equal(ds[5].label, passes[0][1].label)
    assert ds.condition_at(9) == passes[2].condition_at(1)
    assert not np.array_equal(ds[0].image, ds[4].image)  # another seed: other noise (and maybe another condition)
    with pytest.raises(IndexError):
        ds[12]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "nope"], "unknown policy 'nope'; valid: acdc"),
        (["--codec", "gif"], "unknown codec 'gif'"),
        (["--rate", "2"], "upload rate must be a fraction"),
        (["--policy", "acdc"], "needs an uncertainty matrix"),
        (["--policy", "random", "--repeat-schedules", "2"], "under 'clean' every pass"),
        (["--policy", "random", "--repeat-schedules", "0"], "--repeat-schedules must be >= 1"),
        (["--policy", "random", "--bootstrap", "0"], "--bootstrap must be >= 1"),
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
    """The committed models through `collab`: device-only and cloud-only mIoU equal what `evaluate()` gives on the
    same frames (the cloud sees a lossless PNG)."""
    from tandemseg.data.spec import open_dataset
    from tandemseg.eval.evaluate import evaluate
    from tandemseg.models.checkpoint import load_checkpoint

    out = tmp_path / "c.json"
    dev, cloud = REPO / "checkpoints/synthetic-device", REPO / "checkpoints/synthetic-cloud"
    code, _, err = run_main(monkeypatch, capsys, "collab", "--data", "synthetic", "--split", "val",
                            "--device-ckpt", str(dev), "--cloud-ckpt", str(cloud),
                            "--uncertainty", str(REPO / "checkpoints/synthetic-uncertainty.safetensors"), "--policy", "acdc", "--rate", "0.25",
                            "--limit", "4", "--bootstrap", "100", "--json", str(out))
    assert code == 0, err
    res = json.loads(out.read_text())
    ds = open_dataset("synthetic", "val")
    assert res["device_miou"] == pytest.approx(evaluate(load_checkpoint(dev).model, ds, batch_size=1, limit=4)["miou"], abs=1e-3)
    assert res["cloud_miou"] == pytest.approx(evaluate(load_checkpoint(cloud).model, ds, batch_size=1, limit=4)["miou"], abs=1e-3)


def test_a_cache_of_mixed_frame_sizes_round_trips_without_pickle(tmp_path) -> None:
    """Frames of two sizes are stored as separate arrays; a file holding pickled objects is refused, never run."""
    import numpy as np
    import torch

    from tandemseg.data.classes import CAMVID
    from tandemseg.errors import DataError
    from tandemseg.eval.cache import CollabCache

    c = CAMVID.num_classes
    probs = [torch.rand(c, 4, 6), torch.rand(c, 5, 7)]
    preds = [np.zeros((16, 24), np.uint8), np.ones((20, 28), np.uint8)]
    cms = np.zeros((2, c, c), np.int64)
    cache = CollabCache(CAMVID, probs, cms, cms, preds, np.array([10, 20]), np.array([1, 2]), np.zeros(2), np.zeros(2), ["clean", "fog:3"])
    cache.save(tmp_path / "c.npz")
    back = CollabCache.load(tmp_path / "c.npz")
    assert [tuple(p.shape) for p in back.probs] == [(c, 4, 6), (c, 5, 7)] and np.array_equal(back.cloud_pred[1], preds[1])
    hostile = np.empty(2, dtype=object)
    hostile[:] = preds
    np.savez(tmp_path / "h.npz", probs=hostile, meta=np.array("{}"))
    with pytest.raises(DataError, match="not a readable collab cache"):
        CollabCache.load(tmp_path / "h.npz")
