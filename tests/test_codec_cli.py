"""The feature codec's commands on the committed synthetic device: `codec train`, `codec eval`, `rd`, `bench codec`,
and the figures behind them (real bytes: what evaluate_codec counts is what the runtime puts on the wire)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from _tiny import run_main

from tandemseg.cli import main
from tandemseg.codec import load_codec
from tandemseg.data.spec import open_dataset
from tandemseg.device.steps import feature_steps
from tandemseg.errors import SpecError
from tandemseg.eval.codec import evaluate_codec, expand_image_codecs, split_feature_set
from tandemseg.models.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
DEVICE = REPO / "checkpoints/synthetic-device"
CLOUD = REPO / "checkpoints/synthetic-cloud"
pytestmark = pytest.mark.skipif(not (DEVICE / "card.json").is_file(), reason="committed synthetic checkpoints not present")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tiny training run through the CLI, shared by the tests of this module."""
    out = tmp_path_factory.mktemp("codec") / "jd"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["tandemseg", "codec", "train", "--device-ckpt", str(DEVICE), "--data", "synthetic", "--out", str(out),
                                 "--lmbda", "2", "--epochs", "2", "--train-limit", "4", "--val-limit", "3", "--eval-every", "1"])
        main()
    return out


def test_train_writes_a_card_the_history_and_folded_weights(trained: Path) -> None:
    card = json.loads((trained / "card.json").read_text())
    assert card["reparameterized"] is True and card["config"]["lmbda"] == 2.0 and card["recipe"].startswith("tandemseg codec train")
    history = [json.loads(line) for line in (trained / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and all("val_miou" in h for h in history)
    val = card["metrics"]["val"]
    assert val["frames"] == 3 and val["bytes_per_frame"] > 0 and 0.0 <= val["miou"] <= 1.0


def test_counted_bytes_are_the_bytes_the_runtime_uploads(trained: Path) -> None:
    device = load_checkpoint(DEVICE).model
    codec = load_codec(trained, device=device).codec
    ds = open_dataset("synthetic", "val")
    feats = split_feature_set(device, ds, codec.cfg.split_index, limit=2)
    counted = evaluate_codec(codec, feats, ds.classes.num_classes, ds.classes.ignore_index)["bytes_per_frame"]
    model_step, payload = feature_steps(device, codec)
    sent = [len(payload.build(ds[i].image, i, model_step.run(ds[i].image, i), 0).payload) for i in range(2)]
    assert counted == pytest.approx(sum(sent) / 2)


def test_mirrored_features_double_the_items_and_flip_the_labels() -> None:
    device = load_checkpoint(DEVICE).model
    ds = open_dataset("synthetic", "train")
    fs = split_feature_set(device, ds, len(device.feature_info) - 1, mirror=True, limit=2)
    assert len(fs) == 4 and torch.equal(fs.labels[1], fs.labels[0].flip(-1))


def test_eval_rd_and_bench_commands(trained: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    ev = tmp_path / "eval.json"
    code, _, err = run_main(monkeypatch, capsys, "codec", "eval", "--ckpt", str(trained), "--device-ckpt", str(DEVICE),
                            "--data", "synthetic", "--limit", "2", "--json", str(ev))
    assert code == 0, err
    e = json.loads(ev.read_text())
    assert {"miou", "bpp", "bytes_per_frame", "frames", "encode_ms", "decode_ms"} <= set(e) and e["frames"] == 2
    rd = tmp_path / "rd.json"
    code, _, err = run_main(monkeypatch, capsys, "rd", "--data", "synthetic", "--device-ckpt", str(DEVICE), "--cloud-ckpt", str(CLOUD),
                            "--codec-ckpt", str(trained), "--image-codecs", "png,jpeg:10..30", "--limit", "2", "--json", str(rd))
    assert code == 0, err
    points = json.loads(rd.read_text())["points"]
    assert [p["method"] for p in points] == ["jd", "png", "jpeg", "jpeg"] and rd.with_suffix(".png").is_file()
    assert {p["setting"] for p in points[2:]} == {"jpeg:10", "jpeg:30"}
    bench = tmp_path / "bench.json"
    code, _, err = run_main(monkeypatch, capsys, "bench", "codec", "--device-ckpt", str(DEVICE), "--codec-ckpt", str(trained),
                            "--cloud-ckpt", str(CLOUD), "--frames", "1", "--json", str(bench))
    assert code == 0, err
    b = json.loads(bench.read_text())
    assert b["device_ms"] > 0 and b["cloud_decode_ms"] > 0 and b["frames"] == 1


def test_bad_inputs_are_refused_in_one_line(trained: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    code, _, err = run_main(monkeypatch, capsys, "codec", "eval", "--ckpt", str(trained), "--device-ckpt", str(CLOUD),
                            "--data", "synthetic", "--limit", "1")
    assert code == 2 and "device" in err
    code, _, err = run_main(monkeypatch, capsys, "codec", "train", "--device-ckpt", str(DEVICE), "--out", str(tmp_path / "x"),
                            "--decoder", "vae")
    assert code == 2 and "jd" in err
    with pytest.raises(SpecError, match="avif"):
        expand_image_codecs("png,gif:10")
