"""The trainer end to end on a tiny in-memory dataset, resume, and the `train`/`eval` commands.

The fake dataset is a learnable toy: sky over road with one car, each a flat colour with a little
noise, so two epochs of a tiny device model must lower the loss.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny import DEVICE_TINY, run_main

from tandemseg.data.base import Sample
from tandemseg.data.classes import CAMVID
from tandemseg.models.checkpoint import load_checkpoint, save_checkpoint
from tandemseg.models.registry import build_model
from tandemseg.train.augment import AugmentConfig
from tandemseg.train.trainer import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

SKY, ROAD, CAR = CAMVID.names.index("Sky"), CAMVID.names.index("Road"), CAMVID.names.index("Car")
CLI = [sys.executable, "-c", "from tandemseg.cli import main; main()"]


class ToyScenes:
    """`n` frames of 64x96: sky (top), road (bottom), a car box at a frame-dependent place; CamVid classes."""

    classes = CAMVID

    def __init__(self, n: int = 6, split: str = "train", seed: int = 0) -> None:
        self.n, self.split = n, split
        self.samples = [self._make(i, np.random.default_rng([seed, i])) for i in range(n)]

    @staticmethod
    def _make(i: int, rng: np.random.Generator) -> Sample:
        h, w = 64, 96
        label = np.full((h, w), ROAD, dtype=np.int64)
        horizon = 24 + i % 3 * 4
        label[:horizon] = SKY
        x0 = 8 + 13 * i % 60
        label[horizon - 6 : horizon + 14, x0 : x0 + 24] = CAR
        label[:, :2] = CAMVID.ignore_index  # a strip of void, as real data has
        colours = {SKY: (120, 170, 230), ROAD: (90, 90, 95), CAR: (200, 30, 40)}
        image = np.zeros((h, w, 3), dtype=np.float64)
        for cls, rgb in colours.items():
            image[label == cls] = rgb
        image += rng.normal(0, 8, image.shape)
        return Sample(np.clip(image, 0, 255).astype(np.uint8), label, f"toy_{i}")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.samples[i]


def toy_config(epochs: int = 2) -> TrainConfig:
    # Full-frame crops, no colour jitter: the test is about the loop, not augmentation strength.
    aug = AugmentConfig(crop=(64, 96), scale_range=(0.9, 1.1), flip=True, color_jitter=0.0)
    return TrainConfig(epochs=epochs, batch_size=3, lr=5e-3, warmup_iters=1, class_weighting="none", augment=aug)


def make_trainer(out: Path, epochs: int = 2) -> Trainer:
    torch.manual_seed(0)
    model = build_model("device", DEVICE_TINY)
    return Trainer(model, "device", ToyScenes(6), ToyScenes(3, "val", seed=1), out, toy_config(epochs), data_spec="toy", recipe="pytest")


class Interrupt(Exception):
    pass


def test_two_epochs_lower_the_loss_and_write_a_checkpoint(tmp_path: Path) -> None:
    state = make_trainer(tmp_path / "run").fit()
    losses = [h["train_loss"] for h in state.history]
    assert state.epoch == 2 and len(losses) == 2
    assert losses[1] < losses[0], losses
    out = tmp_path / "run"
    assert {"card.json", "weights.safetensors", "last.pt", "log.jsonl", "curve.png"} <= {p.name for p in out.iterdir()}
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and all("val_miou" in r for r in log)
    ck = load_checkpoint(out, expect_kind="device", expect_classes=CAMVID)
    assert ck.card["metrics"]["val"]["miou"] == pytest.approx(state.best_miou)


def test_resume_continues_where_it_stopped(tmp_path: Path) -> None:
    """Stop after epoch 1, resume: only epoch 2 is trained, and the result equals an uninterrupted run
    (per-epoch data streams, optimiser state and the LR schedule are all restored)."""
    out = tmp_path / "resumed"

    def stop_after_first_epoch(ev: dict) -> None:
        if ev["event"] == "epoch":
            raise Interrupt  # after last.pt was written, as a kill between epochs would be

    with pytest.raises(Interrupt):
        make_trainer(out).fit(on_progress=stop_after_first_epoch)
    events: list[dict] = []
    resumed = make_trainer(out)
    state = resumed.fit(on_progress=events.append)
    assert events[0] == {"event": "resumed", "epoch": 1}
    assert {ev["epoch"] for ev in events if ev["event"] == "step"} == {1}  # epoch index 1 only: epoch 1 was not redone
    assert state.epoch == 2 and [h["epoch"] for h in state.history] == [1, 2]
    assert [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2]

    straight = make_trainer(tmp_path / "straight")
    straight.fit()
    assert state.iteration == straight.state.iteration
    for (name, a), b in zip(resumed.model.state_dict().items(), straight.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=f"{name} differs from the uninterrupted run")


def test_resume_from_a_damaged_state_says_how_to_recover(tmp_path: Path) -> None:
    out = tmp_path / "bad"
    out.mkdir()
    (out / "last.pt").write_bytes(b"junk")
    from tandemseg.errors import TandemsegError

    with pytest.raises(TandemsegError, match="cannot resume from .*last.pt .*delete it to start over, or pass a fresh --out"):
        make_trainer(out).fit()


def test_train_config_is_validated() -> None:
    from tandemseg.errors import TandemsegError

    for bad in ({"optimizer": "adam"}, {"class_weighting": "median"}, {"epochs": 0}, {"ohem_fraction": 1.0}):
        with pytest.raises(TandemsegError):
            TrainConfig(**{**asdict(toy_config()), "augment": AugmentConfig(), **bad}).validate()


@pytest.mark.parametrize("args, message", [
    (["--model", "big"], "error: unknown --model 'big'; valid: device, cloud"),
    (["--model", "device", "--val-split", "test"], "error: --val-split test is refused: checkpoints are selected on val"),
    (["--model", "cloud", "--corruptions", "fog,hail"], "error: unknown --corruptions hail; valid: none or a comma list of gaussian_noise"),
    (["--model", "cloud", "--corruptions", "none", "--corrupt-p", "0.5"], "error: --corrupt-p > 0 needs --corruptions"),
])
def test_train_rejects_bad_arguments_in_one_line(monkeypatch, capsys, tmp_path: Path, args: list[str], message: str) -> None:
    code, _, err = run_main(monkeypatch, capsys, "train", *args, "--out", str(tmp_path / "x"))
    assert code == 2
    assert err.strip().startswith(message) and "\n" not in err.strip() and "Traceback" not in err
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_eval_command_writes_metrics_json(tmp_path: Path, tiny_camvid: Path) -> None:
    """The real console path in a subprocess: exit code, JSON keys, frames counted."""
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "ck", build_model("device", DEVICE_TINY).eval(), "device", CAMVID, data="toy", recipe="pytest")
    out = tmp_path / "metrics.json"
    proc = subprocess.run(
        [*CLI, "eval", "--ckpt", str(ckpt), "--data", f"camvid:{tiny_camvid}", "--split", "val", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(out.read_text())
    assert {"miou", "per_class_iou", "pixel_acc", "frames"} <= set(metrics)
    assert metrics["frames"] == 2 and list(metrics["per_class_iou"]) == list(CAMVID.names)
    assert 0.0 <= metrics["pixel_acc"] <= 1.0
    assert "mIoU" in proc.stdout


def test_warm_start_records_its_source_and_trains_from_it(monkeypatch, capsys, tmp_path: Path, tiny_camvid: Path) -> None:
    """--init-from loads a checkpoint's architecture and weights (fresh optimiser), and the new card says where from."""
    torch.manual_seed(0)
    source = save_checkpoint(tmp_path / "src", build_model("device", DEVICE_TINY).eval(), "device", CAMVID,
                             data="toy", recipe="pytest stage 1", metrics={"val": {"miou": 0.25}})
    out = tmp_path / "warm"
    code, _, err = run_main(monkeypatch, capsys, "train", "--model", "device", "--data", f"camvid:{tiny_camvid}", "--init-from", str(source),
                            "--out", str(out), "--epochs", "1", "--batch-size", "2", "--threads", "1", "--corruptions", "fog,dusk", "--corrupt-p", "1")
    assert code == 0, err
    card = json.loads((out / "card.json").read_text())
    assert card["init_from"] == {"path": str(source), "recipe": "pytest stage 1", "commit": load_checkpoint(source).card["commit"], "val_miou": 0.25}
    assert card["config"] == load_checkpoint(source).card["config"]  # the source's (tiny) architecture, not the default
    assert card["train_config"]["augment"]["corruptions"] == ["fog", "dusk"] and card["train_config"]["augment"]["corrupt_p"] == 1.0
    before, after = load_checkpoint(source).model.state_dict(), load_checkpoint(out).model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())


def test_warm_start_refuses_a_checkpoint_of_another_kind(monkeypatch, capsys, tmp_path: Path, tiny_camvid: Path) -> None:
    source = save_checkpoint(tmp_path / "src", build_model("device", DEVICE_TINY).eval(), "device", CAMVID, data="toy", recipe="pytest")
    code, _, err = run_main(monkeypatch, capsys, "train", "--model", "cloud", "--data", f"camvid:{tiny_camvid}",
                            "--init-from", str(source), "--out", str(tmp_path / "x"))
    assert code == 2 and "device" in err and "cloud" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
