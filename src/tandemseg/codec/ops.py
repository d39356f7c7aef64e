"""Small differentiable pieces shared by the entropy models: the quantisation proxy and a lower bound."""

from __future__ import annotations

import math

import torch

LIKELIHOOD_BOUND = 1e-9  # a likelihood never drops below this, so -log2 stays finite (as in CompressAI)


class _LowerBound(torch.autograd.Function):
    """max(x, bound) whose gradient still flows where it pushes x up toward the bound (CompressAI's
    LowerBound): a plain clamp would freeze every scale or likelihood that ever fell below it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        passes = (x >= ctx.bound) | (grad < 0)
        return grad * passes, None


def lower_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    return _LowerBound.apply(x, bound)


def quantize(x: torch.Tensor, training: bool) -> torch.Tensor:
    """JD sec. 3.1: additive uniform noise U(-1/2, 1/2) while training (the VAE relaxation of Ballé et al.),
    true rounding at inference."""
    if training:
        return x + torch.empty_like(x).uniform_(-0.5, 0.5)
    return torch.round(x)


def std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Phi(x) through erfc, which keeps precision in the far left tail where 1 - erf would cancel."""
    return 0.5 * torch.erfc(-x / math.sqrt(2.0))


def bits(likelihoods: torch.Tensor) -> torch.Tensor:
    """-log2 of the likelihoods, summed: the ideal code length in bits (numerator of eq. 1)."""
    return -torch.log2(likelihoods).sum()
