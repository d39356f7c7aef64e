"""The two MESS training stages (paper 003, sec. 4.3) as step functions and a tiny loop.

Stage 1, exit-aware pre-training: FCN heads on every candidate exit point, the backbone and decoder
trained end to end with the exit-dropout loss (eq. 2): the final exit plus one early exit per iteration.
Stage 2, frozen backbone: the backbone and the final exit are frozen (weights and BatchNorm statistics);
every candidate exit architecture is trained jointly on the shared features with PFD (eq. 3), CE or KD.

A CLI (`tandemseg exits train`) owns data loading, schedules and checkpoints; these functions take
ready batches: frames (N, 3, H, W) in [0, 1] and labels (N, H, W).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from tandemseg.errors import SpecError
from tandemseg.exits.heads import ExitSpec
from tandemseg.exits.losses import stage1_exits, stage1_loss, stage2_loss
from tandemseg.exits.network import FINAL, MultiExitSegmenter
from tandemseg.models.blocks import resize


def stage1_network(base: torch.nn.Module, exit_points: Sequence[int]) -> MultiExitSegmenter:
    """The intermediate multi-exit model of stage 1: a vanilla FCN-Head (ExitSpec()) at every candidate point."""
    return MultiExitSegmenter(base, exit_points, ExitSpec())


def stage2_network(stage1: MultiExitSegmenter, specs: Sequence[ExitSpec] | Sequence[Sequence[ExitSpec]]) -> MultiExitSegmenter:
    """The overprovisioned network of stage 2: stage 1's backbone, fresh candidate heads at the same points.

    `specs`: one list of candidates for every point, or one list per point. Stage 1's heads are dropped:
    they existed to shape the backbone (sec. 4.3).
    """
    points = stage1.exit_points
    per_point = [list(specs)] * len(points) if all(isinstance(s, ExitSpec) for s in specs) else [list(s) for s in specs]
    return MultiExitSegmenter(stage1.base, points, per_point, stage1.num_classes)


def freeze_backbone(net: MultiExitSegmenter) -> None:
    """Stage 2: no gradients into the backbone or the final exit, BatchNorm statistics frozen."""
    for p in net.base.parameters():
        p.requires_grad_(False)
    set_stage2_mode(net)


def set_stage2_mode(net: MultiExitSegmenter) -> None:
    """Heads in train mode, the frozen base in eval mode (its BatchNorm must not drift)."""
    net.train()
    net.base.eval()


def optimizer(net: MultiExitSegmenter, lr: float = 1e-3, weight_decay: float = 1e-4) -> torch.optim.Optimizer:
    """AdamW over the parameters that still train (everything in stage 1, the heads in stage 2)."""
    return torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)


def stage1_step(
    net: MultiExitSegmenter, opt: torch.optim.Optimizer, frames: torch.Tensor, labels: torch.Tensor, step: int,
    ignore: int = 255, weight: torch.Tensor | None = None, schedule: str = "dropout",
) -> dict:
    """One exit-aware pre-training iteration: eq. 2 by default (`schedule` in losses.STAGE1_LOSSES). Only the
    trained heads run, so the dropped heads get no gradient at all (their .grad stays None after
    `zero_grad(set_to_none=True)`)."""
    outputs = net(frames, [*stage1_exits(schedule, step, net.exit_keys), FINAL])  # {key: (N, C, H, W)}
    loss, chosen = stage1_loss(outputs, net.exit_keys, FINAL, labels, step, ignore, weight, schedule)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"step": step, "loss": float(loss.detach()), "exits": chosen}


def stage2_step(
    net: MultiExitSegmenter, opt: torch.optim.Optimizer, frames: torch.Tensor, labels: torch.Tensor,
    loss: str = "pfd", alpha: float = 0.5, ignore: int = 255, temperature: float = 1.0,
) -> dict:
    """One frozen-backbone iteration: shared features and the teacher once, without gradients, then every head."""
    size = tuple(labels.shape[-2:])
    with torch.no_grad():
        feats = net.encode(frames, [FINAL])
        final = resize(net.exit_native(FINAL, feats), size)  # (N, C, H, W): the frozen final exit, the teacher
    exits = [resize(net.exit_native(k, feats), size) for k in net.exit_keys]  # each (N, C, H, W)
    value = stage2_loss(loss, exits, final, labels, alpha, ignore, temperature)
    opt.zero_grad(set_to_none=True)
    value.backward()
    opt.step()
    return {"loss": float(value.detach()), "heads": len(exits)}


def fit(
    net: MultiExitSegmenter, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], stage: int, steps: int,
    lr: float = 1e-3, loss: str = "pfd", alpha: float = 0.5, ignore: int = 255, schedule: str = "dropout",
) -> list[dict]:
    """A tiny loop: `steps` iterations of stage 1 or 2 over `batches` (cycled); returns the per-step records."""
    if stage not in (1, 2):
        raise SpecError(f"MESS has training stages 1 and 2, not {stage}")
    if stage == 2:
        freeze_backbone(net)
    else:
        net.train()
    opt = optimizer(net, lr)
    batches = list(batches)
    history = []
    for step in range(steps):
        frames, labels = batches[step % len(batches)]
        if stage == 1:
            history.append(stage1_step(net, opt, frames, labels, step, ignore, schedule=schedule))
        else:
            history.append(stage2_step(net, opt, frames, labels, loss, alpha, ignore))
    return history
