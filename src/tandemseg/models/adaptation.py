"""CEMA's objectives (paper 002) for segmentation: entropies, the reliability weight, the foundation's entropy
minimisation and the student's distillation objective; plus which tensors adapt.

Readings chosen (the poster gives the objective, not the weighting's form):
- E(x) of a frame is its mean pixel entropy (ACDC eq. 11 averaged), in nats.
- The reliability weight H(x) = exp(-(E(x) - E_0)) with E_0 = e_margin * ln C, detached (the form of CEMA's and
  ETA's reference code: confident samples count more, uncertain ones fade).
- The foundation adapts Tent-style: the frames' weighted mean pixel entropy, minimised over the normalisation
  affine parameters, BatchNorm on batch statistics.
- The student's H(x) is computed on the student's own prediction (what the edge model is unsure of counts less),
  KL is KL(teacher || student), the pseudo-label is the teacher's argmax.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NORM_TYPES = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)


def pixel_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) logits -> (N, H, W) entropy in nats."""
    logp = F.log_softmax(logits, 1)  # (N, C, H, W)
    return -(logp.exp() * logp).sum(1)


def frame_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N,) mean pixel entropy: E(x) of the sample filter and of the weight."""
    return pixel_entropy(logits).mean((1, 2))


def reliability_weight(entropy: torch.Tensor, num_classes: int, e_margin: float) -> torch.Tensor:
    """H(x) = exp(-(E(x) - E_0)), E_0 = e_margin * ln C; detached, shape of `entropy`."""
    return torch.exp(-(entropy.detach() - e_margin * math.log(num_classes)))


def foundation_loss(logits: torch.Tensor, e_margin: float) -> torch.Tensor:
    """Weighted entropy minimisation of the foundation model: mean_x H(x) * E(x)."""
    e = frame_entropy(logits)  # (N,)
    return (reliability_weight(e, logits.shape[1], e_margin) * e).mean()


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, alpha: float, beta: float, e_margin: float) -> torch.Tensor:
    """CEMA's student objective: mean_x H(x) [alpha KL(f_theta(x) || g_w(x)) + beta CE(g_w(x), y^) + ENT(g_w(x))].

    `student` (N, C, h, w) and `teacher` (N, C, H, W) logits; the teacher is resized to the student's grid.
    """
    teacher = F.interpolate(teacher.detach(), size=student.shape[-2:], mode="bilinear", align_corners=False)  # (N, C, h, w)
    log_s = F.log_softmax(student, 1)  # (N, C, h, w)
    log_t = F.log_softmax(teacher, 1)  # (N, C, h, w)
    kl = (log_t.exp() * (log_t - log_s)).sum(1).mean((1, 2))  # (N,)
    ce = F.nll_loss(log_s, teacher.argmax(1), reduction="none").mean((1, 2))  # (N,)
    ent = -(log_s.exp() * log_s).sum(1).mean((1, 2))  # (N,)
    weight = reliability_weight(ent, student.shape[1], e_margin)  # (N,)
    return (weight * (alpha * kl + beta * ce + ent)).mean()


def adapted_parameters(model: nn.Module, which: str = "norm") -> dict[str, nn.Parameter]:
    """The parameters that adapt: the normalisation layers' affine ones ('norm') or all ('all')."""
    if which == "all":
        return dict(model.named_parameters())
    out = {}
    for mname, module in model.named_modules():
        if isinstance(module, NORM_TYPES):
            for pname, p in module.named_parameters(recurse=False):
                out[f"{mname}.{pname}" if mname else pname] = p
    return out


def adapted_state_names(model: nn.Module, which: str = "norm") -> list[str]:
    """Names in the state dict an update may carry: the adapted parameters and the BatchNorm running statistics
    that move with them (never the integer batch counters)."""
    names = set(adapted_parameters(model, which))
    for mname, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d) and module.track_running_stats:
            names |= {f"{mname}.running_mean", f"{mname}.running_var"}
    return sorted(names)


def set_adaptation_mode(model: nn.Module, norm: str = "batch") -> None:
    """Eval mode (no dropout on test frames); with norm 'batch' or 'frame', BatchNorm on the statistics of what it is
    given (Tent; 'frame' callers give one frame at a time), with 'running' on the statistics it was trained with."""
    model.eval()
    if norm in ("batch", "frame"):
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.train()


def freeze_running_statistics(model: nn.Module) -> None:
    """BatchNorm running statistics never move again (momentum 0), whatever mode the layers run in."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.0


def forward_per_frame(model: nn.Module, x: torch.Tensor, norm: str) -> torch.Tensor:
    """The device's coarse logits (N, C, h, w); with norm 'frame' every frame is normalised alone (one forward each)."""
    set_adaptation_mode(model, norm)
    if norm == "frame":
        return torch.cat([model.forward_coarse(x[i:i + 1]) for i in range(x.shape[0])])
    return model.forward_coarse(x)


def only_train(model: nn.Module, params: dict[str, nn.Parameter]) -> list[nn.Parameter]:
    """requires_grad on `params` alone; returns them for an optimizer."""
    keep = {id(p) for p in params.values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return list(params.values())
