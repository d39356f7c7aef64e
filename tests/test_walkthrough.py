"""The demo's walk through the device runtime and its panel: measured thresholds, traces, picked frames, the PNG."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from _service_helpers import C, tiny_cloud, tiny_device
from PIL import Image

from tandemseg.cloud.service import CloudService, ModelSegmenter
from tandemseg.data.classes import CAMVID
from tandemseg.data.spec import open_dataset
from tandemseg.device.budget import SAController, WindowController
from tandemseg.device.link import InProcessLink
from tandemseg.device.policies import make_policy
from tandemseg.device.runtime import DeviceRuntime
from tandemseg.device.uncertainty import UncertaintyMatrix
from tandemseg.eval.panel import draw_panel
from tandemseg.eval.walkthrough import FrameTrace, decision_text, decision_threshold, pick_frames, walk_stream
from tandemseg.wire.messages import UploadRequest
from tandemseg.wire.payload import decode_label_png, encode_frame

pytestmark = pytest.mark.usefixtures("one_thread")


def fed(controller, scores: list[float]):
    for i, s in enumerate(scores):
        controller.decide(s, i)
    return controller


@pytest.mark.parametrize("controller", [WindowController(0.3, window=8, warmup=0), SAController(0.3)])
def test_threshold_is_the_controllers_boundary_and_leaves_it_untouched(controller) -> None:
    scores = list(np.random.default_rng(0).normal(size=12))
    fed(controller, scores)
    before = (controller.stats.frames, controller.stats.uploads)
    t = decision_threshold(controller, 12, scores)
    assert math.isfinite(t)
    assert (controller.stats.frames, controller.stats.uploads) == before  # asked of copies only
    import copy

    assert copy.deepcopy(controller).decide(t + 1e-6, 12) and not copy.deepcopy(controller).decide(t - 1e-6, 12)


def test_threshold_is_infinite_when_the_score_cannot_matter() -> None:
    assert decision_threshold(WindowController(0.3, warmup=5), 0, []) == math.inf  # warm-up: nothing goes
    assert decision_threshold(fed(WindowController(1.0, warmup=0), [0.1, 0.2]), 2, [0.1, 0.2]) == -math.inf  # everything goes


def cloud_maps(cloud, dataset, n: int) -> list[np.ndarray]:
    service = CloudService(ModelSegmenter(cloud), CAMVID)
    maps = []
    for i in range(n):
        image = dataset[i].image
        req = UploadRequest("maps", i, encode_frame(image, "png"), "png", *image.shape[:2])
        maps.append(decode_label_png(service.segment_batch([req])[0].label_png))
    return maps


@pytest.fixture
def walked(tmp_path, fake):
    root = fake.make_camvid(tmp_path / "camvid", {"train": 1, "val": 12})
    dataset = open_dataset(f"camvid:{root}", "val", "stream:clean,fog:3/6")
    device, cloud = tiny_device(), tiny_cloud()
    a = np.random.default_rng(0).normal(size=(C, C))
    u = UncertaintyMatrix((a + a.T) / 2, CAMVID)
    runtime = DeviceRuntime(device, make_policy("acdc", u), WindowController(0.4, window=8, warmup=2),
                            InProcessLink(CloudService(ModelSegmenter(cloud), CAMVID)), uncertainty=u)
    traces = walk_stream(dataset, runtime, cloud_maps(cloud, dataset, 12), 12)
    runtime.close()
    return traces


def test_traces_say_what_the_runtime_did(walked) -> None:
    traces = walked
    assert [t.index for t in traces] == list(range(12))
    first, second = {t.condition for t in traces[:6]}, {t.condition for t in traces[6:]}  # segments of 6, in a seeded order
    assert len(first) == len(second) == 1 and first | second == {"clean", "fog:3"}
    assert any(t.uploaded for t in traces) and not all(t.uploaded for t in traces)
    for t in traces:
        if t.uploaded:
            assert t.provenance == "cloud" and np.array_equal(t.final, t.cloud)  # the reply is the cloud map the panel shows
        else:
            assert t.provenance == "device" and np.array_equal(t.final, t.device)
        if math.isfinite(t.threshold):
            assert (t.score >= t.threshold - 1e-9) if t.uploaded else (t.score <= t.threshold + 1e-9)


def test_pick_frames_shows_both_decisions_per_condition(walked) -> None:
    picked = pick_frames(walked, 2)
    assert [t.condition for t in picked].count("clean") <= 2 and [t.condition for t in picked].count("fog:3") <= 2
    for condition in ("clean", "fog:3"):
        group = [t for t in walked if t.condition == condition]
        shown = [t for t in picked if t.condition == condition]
        if any(t.uploaded for t in group) and not all(t.uploaded for t in group):
            assert {t.uploaded for t in shown} == {True, False}


def test_panel_png_has_a_row_per_frame(walked, tmp_path) -> None:
    one = draw_panel(walked[:1], CAMVID, tmp_path / "one.png")
    four = draw_panel(pick_frames(walked, 2), CAMVID, tmp_path / "panel.png", title="acdc at 40%")
    with Image.open(one) as a, Image.open(four) as b:
        assert a.format == b.format == "PNG" and b.height > 2 * a.height and a.width == b.width
    with pytest.raises(ValueError, match="at least one"):
        draw_panel([], CAMVID, tmp_path / "none.png")


def test_decision_text_names_score_and_threshold() -> None:
    base = dict(index=0, condition="clean", image=None, label=None, device=None, cloud=None, final=None, provenance="cloud")
    assert decision_text(FrameTrace(**base, uploaded=True, score=0.52, threshold=0.41)) == "uploaded: u 0.52 > threshold 0.41"
    kept = FrameTrace(**{**base, "provenance": "device"}, uploaded=False, score=0.1, threshold=math.inf)
    assert decision_text(kept) == "kept on device: u 0.1; the controller sends nothing now"
    late = FrameTrace(**{**base, "provenance": "fallback:timeout"}, uploaded=True, score=0.9, threshold=0.5)
    assert decision_text(late) == "uploaded (fallback:timeout): u 0.9 > threshold 0.5"


@pytest.mark.slow
def test_demo_writes_the_panel_and_its_numbers(tmp_path, monkeypatch, capsys) -> None:
    """`make demo` in small: the committed synthetic checkpoints, 8 frames, every file it promises."""
    import json

    from _tiny import run_main

    from tandemseg.cli.demo import CHECKPOINTS

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    out = tmp_path / "demo"
    code, stdout, stderr = run_main(monkeypatch, capsys, "demo", "--out", str(out), "--frames", "8", "--threads", "1",
                                    "--checkpoints", str(CHECKPOINTS))
    assert code == 0, stderr
    for name in ("preview.png", "alone.json", "collab.json", "collab.png", "panel.png", "panel.json"):
        assert (out / name).is_file(), name
    panel = json.loads((out / "panel.json").read_text())
    assert len(panel["frames"]) == 8 and panel["shown"] and "mIoU on 8 synthetic val frames" in stdout
