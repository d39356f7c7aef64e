"""Exact, machine-independent sigma for the byte path: the hyperprior decoder in integer arithmetic.

Encoder and decoder must pick the same scale-table index for every element of r, or the range
decoder silently produces garbage. A float HD cannot promise that: a different batch size, thread
count, CPU or GPU changes the summation order and the last bit of sigma, and a sigma that sits on a
table boundary flips its index. Following the idea of integer networks (Ballé, Johnston, Minnen,
ICLR 2019), the byte path replays HD with weights rounded to multiples of 2^-16 and activations
rounded to multiples of 2^-8. The integers are held in float64, where sums of integers below 2^53
are exact in any order, so every machine gets bit-identical sigma. `check_exact_range` proves
the 2^53 bound for the given weights before any coding happens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tandemseg.codec.errors import CodecError

INPUT_CLAMP = 2.0**12  # |h_hat| beyond this is clamped before HD (identically on both ends)
ACT_RANGE_BITS = 12  # activations are clamped to [0, 2^12) in value, i.e. [0, 2^(12 + act_bits)) as integers
EXACT = 2.0**53  # float64 represents every integer below this exactly


def _quantized(layer: nn.Module, weight_bits: int, in_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer weights (value * 2^weight_bits) and bias (value * 2^(weight_bits + in_bits)), as float64."""
    w = torch.round(layer.weight.detach().double().cpu() * 2.0**weight_bits)
    b = torch.round(layer.bias.detach().double().cpu() * 2.0 ** (weight_bits + in_bits))
    return w, b


def check_exact_range(w: torch.Tensor, b: torch.Tensor, max_input: float, transposed: bool) -> None:
    """Raise unless every partial sum of this layer stays below 2^53 for inputs in [-max_input, max_input]."""
    fan = w.abs().sum(dim=(0, 2, 3)) if transposed else w.abs().sum(dim=(1, 2, 3))  # per output channel
    worst = float((fan * max_input + b.abs()).max())
    if worst >= EXACT:
        raise CodecError(
            f"the hyperprior decoder's weights are too large for exact integer evaluation (sums up to 2^{math.log2(worst):.1f}); "
            "lower int_weight_bits or int_act_bits in the codec config"
        )


def _apply(layer: nn.Module, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    if isinstance(layer, nn.ConvTranspose2d):
        expect = [(n - 1) * layer.stride[i] - 2 * layer.padding[i] + layer.kernel_size[i] for i, n in enumerate(x.shape[-2:])]
        extra = tuple(int(s - e) for s, e in zip(size, expect, strict=True))
        return F.conv_transpose2d(x, w, b, layer.stride, layer.padding, extra, layer.groups, layer.dilation)
    return F.conv2d(x, w, b, layer.stride, layer.padding, layer.dilation, layer.groups)


@torch.no_grad()
def integer_scales(hd: nn.Module, h_hat: torch.Tensor, sizes: list[tuple[int, int]], weight_bits: int = 16,
                   act_bits: int = 8) -> torch.Tensor:
    """sigma = HD(h_hat) on the CPU in exact integer arithmetic -> float64 multiples of 2^-act_bits.

    `hd` is a `layers.HyperDecoder` (ReLU after every layer); `sizes` as for its forward."""
    x = h_hat.detach().double().cpu().round().clamp(-INPUT_CLAMP, INPUT_CLAMP)  # (N, C_h, h, w), integers
    in_bits, max_input = 0, INPUT_CLAMP
    for i, layer in enumerate(hd.layers):
        w, b = _quantized(layer, weight_bits, in_bits)
        check_exact_range(w, b, max_input, isinstance(layer, nn.ConvTranspose2d))
        acc = _apply(layer, x, w, b, sizes[i] if i < len(sizes) else None)  # value * 2^(weight_bits + in_bits), exact
        shift = 2.0 ** (weight_bits + in_bits - act_bits)
        x = torch.floor(torch.relu(acc) / shift + 0.5).clamp_(max=2.0 ** (ACT_RANGE_BITS + act_bits) - 1)  # round, bound
        in_bits, max_input = act_bits, 2.0 ** (ACT_RANGE_BITS + act_bits)
    return x / 2.0**act_bits  # (N, C_r, h_r, w_r): exact multiples of 2^-act_bits
