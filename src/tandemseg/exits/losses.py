"""Training losses for multi-exit segmenters (MESS, paper 003, sec. 4.3).

    exit-dropout (eq. 2, stage 1)   L = CE(y_N) + CE(y_i) with ONE early exit i per iteration, round robin
    E2E, final only (Table 5)       L = CE(y_N) + sum_i CE(y_i);   L = CE(y_N)
    PFD (eq. 3, stage 2)            L = sum_i  a * 1(y^_N = y^) * CE(y_i, y^) + (1 - a) * KL(y_N || y_i)
    CE-only, KD (baselines)         sum_i CE(y_i, y^);   sum_i a * CE(y_i, y^) + (1 - a) * KL(y_N || y_i)

All logits are (N, C, H, W) at the label's size, labels (N, H, W) with `ignore` for void pixels. Per-pixel
terms are averaged over the labelled pixels, so the indicator of eq. 3 removes pixels from the sum without
re-weighting the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from tandemseg.errors import SpecError

STAGE2_LOSSES = ("pfd", "ce", "kd")
STAGE1_LOSSES = ("dropout", "all", "final")  # eq. 2; Table 5's end-to-end row; the single-exit control


def round_robin_exit(step: int, n_early: int) -> int:
    """Index of the early exit trained at iteration `step` (eq. 2 read as the text describes it).

    Sec. 4.3 says a *single* early exit is updated per iteration, the rest dropped out round robin. Eq. 2's
    literal indicator 1(j mod i = 0) would instead train exit 1 at every iteration and several exits
    together whenever j has several divisors; we follow the text.
    """
    if n_early <= 0:
        raise SpecError("exit-dropout needs at least one early exit")
    return step % n_early


def stage1_exits(schedule: str, step: int, early_keys: Sequence[str]) -> list[str]:
    """The early exits trained at iteration `step` of stage 1 (the final exit always trains).

    'dropout' is eq. 2 (one early exit, round robin); 'all' is the end-to-end baseline of Table 5 (every exit's
    CE summed at every step); 'final' trains the final exit alone, the single-exit control that separates the
    effect of the exits on the final exit from the effect of training longer.
    """
    if schedule == "dropout":
        return [early_keys[round_robin_exit(step, len(early_keys))]]
    if schedule == "all":
        return list(early_keys)
    if schedule == "final":
        return []
    raise SpecError(f"unknown stage-1 exit loss {schedule!r}; valid: {', '.join(STAGE1_LOSSES)}")


def stage1_loss(
    outputs: Mapping[str, torch.Tensor], early_keys: Sequence[str], final_key: str, target: torch.Tensor,
    step: int, ignore: int = 255, weight: torch.Tensor | None = None, schedule: str = "dropout",
) -> tuple[torch.Tensor, list[str]]:
    """Eq. 2 (schedule 'dropout'): CE of the final exit plus CE of the early exits `stage1_exits` picks for
    `step`; returns (loss, those exits). Only the exits read here need to be in `outputs`."""
    chosen = stage1_exits(schedule, step, early_keys)
    loss = sum((F.cross_entropy(outputs[k], target, weight=weight, ignore_index=ignore) for k in chosen),
               start=F.cross_entropy(outputs[final_key], target, weight=weight, ignore_index=ignore))
    return loss, chosen


def _pixel_terms(
    logits: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, ignore: int, temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pixel CE (N, H, W), per-pixel KL(teacher || student) (N, H, W), labelled-pixel mask (N, H, W)."""
    valid = target != ignore  # (N, H, W)
    ce = F.cross_entropy(logits, target.masked_fill(~valid, 0), reduction="none")  # (N, H, W)
    log_p = F.log_softmax(logits / temperature, 1)  # (N, C, H, W)
    log_q = F.log_softmax(teacher.detach() / temperature, 1)  # (N, C, H, W): the frozen final exit
    kl = (log_q.exp() * (log_q - log_p)).sum(1) * temperature**2  # (N, H, W); T^2 keeps gradients comparable
    return ce, kl, valid


def distillation_loss(
    exit_logits: Sequence[torch.Tensor], final_logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.5,
    ignore: int = 255, temperature: float = 1.0, positive_filter: bool = True, filter_kd: bool = False,
) -> torch.Tensor:
    """Eq. 3 summed over the early exits (PFD), or plain KD with `positive_filter=False`.

    PFD keeps the ground-truth CE term only on pixels the final exit predicts correctly (1(y^_N = y^)):
    where the final exit is wrong, the label and the teacher contradict each other and the shallow exit is
    given only the teacher's distribution. That is eq. 3 as written, the indicator on the CE term; with
    `filter_kd` the KL term is masked as well (distil only where the teacher is right).
    """
    correct = final_logits.detach().argmax(1) == target  # (N, H, W); False on ignored pixels
    total = final_logits.new_zeros(())
    for logits in exit_logits:
        ce, kl, valid = _pixel_terms(logits, final_logits, target, ignore, temperature)
        ce_mask = (correct if positive_filter else valid).float()  # (N, H, W)
        kl_mask = (correct if (positive_filter and filter_kd) else valid).float()  # (N, H, W)
        pixels = valid.sum().clamp(min=1)
        total = total + (alpha * ce * ce_mask + (1 - alpha) * kl * kl_mask).sum() / pixels
    return total


def ce_loss(exit_logits: Sequence[torch.Tensor], target: torch.Tensor, ignore: int = 255) -> torch.Tensor:
    """CE-only baseline: each early exit against the labels, summed over exits."""
    return sum((F.cross_entropy(x, target, ignore_index=ignore) for x in exit_logits), start=exit_logits[0].new_zeros(()))


def stage2_loss(
    name: str, exit_logits: Sequence[torch.Tensor], final_logits: torch.Tensor, target: torch.Tensor,
    alpha: float = 0.5, ignore: int = 255, temperature: float = 1.0,
) -> torch.Tensor:
    """The frozen-backbone loss by name: 'pfd' (eq. 3), 'ce' or 'kd' (Table 6's comparison)."""
    if name == "ce":
        return ce_loss(exit_logits, target, ignore)
    if name in ("pfd", "kd"):
        return distillation_loss(exit_logits, final_logits, target, alpha, ignore, temperature, positive_filter=name == "pfd")
    raise SpecError(f"unknown stage-2 loss {name!r}; valid: {', '.join(STAGE2_LOSSES)}")
