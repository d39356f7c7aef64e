"""Training a multi-exit device network (MESS sec. 4.2-4.3) on a dataset, with resume and per-exit validation.

Stage 1 (exit-aware pre-training): FCN heads at the candidate points, the backbone trained end to end with
the exit-dropout loss (eq. 2; the final exit plus one early exit per step, round robin). Stage 2: the
backbone (final exit included) frozen, fresh candidate heads trained with PFD (eq. 3) or the CE / KD
baselines. The steps are the library's (exits/train.py); this module adds epochs over augmented batches
(the segmenter trainer's `TrainingBatches`), a poly learning rate, `last.pt` resume, and validation that
scores every exit on the val frames (exits/calibrate.py's cache), so Tables 5 and 6 read off the log.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from tandemseg.data.base import SegDataset
from tandemseg.data.tensors import to_tensor
from tandemseg.errors import TandemsegError
from tandemseg.exits.calibrate import ExitCache, collect_cache
from tandemseg.exits.network import MultiExitSegmenter
from tandemseg.exits.search import miou_batch
from tandemseg.exits.train import freeze_backbone, optimizer, stage1_step, stage2_step
from tandemseg.train.augment import AugmentConfig
from tandemseg.train.trainer import TrainingBatches


@dataclass
class ExitTrainConfig:
    stage: int = 1  # 1: exit-dropout pre-training of backbone + FCN heads; 2: frozen backbone, candidate heads
    exit_loss: str = "dropout"  # stage 1: dropout (eq. 2) | all (end to end, Table 5) | final (the single-exit control)
    epochs: int = 6
    batch_size: int = 8
    lr: float = 5e-4  # stage 1 fine-tunes a trained device network: lower than training it from ImageNet
    poly_power: float = 0.9
    loss: str = "pfd"  # stage 2: pfd | ce | kd
    alpha: float = 0.5  # stage 2: weight of the distillation term
    label_stride: int = 1  # stage 2: score the heads on every label_stride-th pixel (nearest subsampling of the labels)
    val_limit: int | None = None
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def exit_mious(net: MultiExitSegmenter, dataset: SegDataset, limit: int | None = None) -> dict[str, float]:
    """mIoU of every exit (candidates and final) on `dataset`: each exit answering every frame."""
    cache = collect_cache(net, frames_and_labels(dataset, limit), ignore=dataset.classes.ignore_index)
    return per_exit_miou(cache)


def per_exit_miou(cache: ExitCache) -> dict[str, float]:
    return dict(zip(cache.keys, miou_batch(cache.cms.sum(0)).tolist(), strict=True))


def frames_and_labels(dataset: SegDataset, limit: int | None = None):
    """(frame (3, H, W) in [0, 1], label (H, W)) per frame, as the calibration cache reads them."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in range(n):
        s = dataset[i]
        yield to_tensor([s.image])[0], s.label


def train_exits(net: MultiExitSegmenter, train_set: SegDataset, val_set: SegDataset, cfg: ExitTrainConfig, out: Path,
                on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Stage `cfg.stage` for `cfg.epochs` epochs; resumes from out/last.pt; returns the epoch records."""
    if cfg.stage not in (1, 2):
        raise TandemsegError(f"MESS has training stages 1 and 2, not {cfg.stage}")
    torch.manual_seed(cfg.seed)
    if cfg.stage == 2:
        freeze_backbone(net)
    opt = optimizer(net, cfg.lr)
    data = TrainingBatches(train_set, cfg.augment)
    history, start = _resume(net, opt, out)
    steps = math.ceil(len(data.samples()) / cfg.batch_size)
    total = steps * cfg.epochs
    ignore = train_set.classes.ignore_index
    for epoch in range(start, cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch])
        order = rng.permutation(len(data.samples()))
        _set_mode(net, cfg.stage)
        t0, losses = time.perf_counter(), []
        for b in range(steps):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            if len(idx) < 2:  # BatchNorm needs more than one sample
                continue
            it = epoch * steps + b
            for g in opt.param_groups:
                g["lr"] = cfg.lr * (1 - it / total) ** cfg.poly_power
            x, y = data.batch(idx, rng)
            if cfg.stage == 2 and cfg.label_stride > 1:
                # Stage 2 resizes every head and the teacher to the label size: on a CPU, nine heads at full resolution
                # dominate the step. Scoring on a strided grid keeps eq. 3's pixel filter and its targets, at 1/stride^2
                # of the cost (a reading chosen for this machine; the paper is silent on the loss resolution).
                y = y[:, ::cfg.label_stride, ::cfg.label_stride]
            rec = stage1_step(net, opt, x, y, it, ignore, schedule=cfg.exit_loss) if cfg.stage == 1 else stage2_step(net, opt, x, y, cfg.loss, cfg.alpha, ignore)
            losses.append(rec["loss"])
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "train_s": time.perf_counter() - t0,
                  "val_miou": exit_mious(net, val_set, cfg.val_limit)}
        history.append(record)
        _save_state(net, opt, out, history, cfg)
        if on_epoch:
            on_epoch(record)
    return history


def _set_mode(net: MultiExitSegmenter, stage: int) -> None:
    net.train()
    if stage == 2:
        net.base.eval()  # the frozen base keeps its BatchNorm statistics


def _save_state(net: MultiExitSegmenter, opt: torch.optim.Optimizer, out: Path, history: list[dict], cfg: ExitTrainConfig) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "last.pt.tmp"
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "history": history, "config": asdict(cfg)}, tmp)
    tmp.replace(out / "last.pt")
    (out / "log.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))


def _resume(net: MultiExitSegmenter, opt: torch.optim.Optimizer, out: Path) -> tuple[list[dict], int]:
    path = out / "last.pt"
    if not path.is_file():
        return [], 0
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
        net.load_state_dict(blob["model"])
        opt.load_state_dict(blob["optimizer"])
    except Exception as e:
        raise TandemsegError(f"cannot resume from {path} ({e}); delete it to start over, or pass a fresh --out") from None
    return list(blob["history"]), len(blob["history"])
