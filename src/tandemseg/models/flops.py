"""The one FLOP counter: every GFLOPs figure in the project (bench, collab, exit costs) comes from here.

torch.utils.flop_counter counts 2 FLOPs per multiply-add of convolutions and matmuls (elementwise ops,
pooling and resizing are not counted), the convention of the papers' GFLOPs columns.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


@torch.inference_mode()
def count_call_gflops(fn: Callable[[], object]) -> float:
    """GFLOPs of one call of `fn` (its inputs already built)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 1e9


def count_gflops(forward: Callable[[torch.Tensor], object], input_shape: tuple[int, ...]) -> float:
    """GFLOPs of one `forward` (a model or one of its methods) on a zero input of `input_shape`."""
    x = torch.zeros(input_shape)
    return count_call_gflops(lambda: forward(x))
