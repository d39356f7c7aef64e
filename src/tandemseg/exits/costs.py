"""Where exits go and what they cost: per-stage cumulative FLOPs, exit placement (MESS sec. 4.1), and the
per-exit cost tables (GFLOPs, CPU latency) that the configuration search combines (Table 1).

FLOPs follow the repo's convention (models/flops.py): `torch.utils.flop_counter.FlopCounterMode`, one
multiply-add = 2 FLOPs, convolutions and matrix products only (the downsample, BatchNorm in eval and
interpolation are not counted).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from tandemseg.exits.confidence import logits_confidence
from tandemseg.exits.network import FINAL, MultiExitSegmenter, encoder_input
from tandemseg.models.blocks import resize
from tandemseg.models.flops import count_call_gflops


@dataclass
class CostTable:
    """Additive per-exit costs in one unit (Table 1's terms).

    backbone[i]: cost from the frame to the output of stage i (cumulative, the b_1..b_K of Table 1);
    heads[key]: cost of exit `key`'s head (S*_exit), the decoder for 'final';
    policy[key]: cost of deciding at early exit `key` (the confidence of eq. 7-9; 0 for FLOPs).
    """

    unit: str
    backbone: list[float]
    heads: dict[str, float]
    policy: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> CostTable:
        return cls(d["unit"], list(d["backbone"]), dict(d["heads"]), dict(d.get("policy", {})))


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Probe passes must not move BatchNorm statistics: eval for the duration, previous mode after."""
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)


@torch.inference_mode()
def stage_gflops(base: nn.Module, input_hw: tuple[int, int]) -> list[float]:
    """Cumulative GFLOPs from the frame to each stage's output (sec. 4.1's per-layer profile, per stage)."""
    with eval_mode(base):
        x = encoder_input(base, torch.zeros(1, 3, *input_hw))  # (1, 3, h, w)
        return [count_call_gflops(lambda i=i: base.encoder.forward_intermediates(x, [i], stop_early=True)) for i in range(len(base.feature_info))]


def place_exit_points(cumulative: Sequence[float], n: int) -> list[int]:
    """Sec. 4.1: n candidate exit points at about every 1/(n+1)-th of the backbone's workload.

    With the final exit that makes N = n + 1 exits, spaced every 1/N of the encoder's FLOPs. Exits sit at
    stage outputs (timm's granularity; the paper uses block outputs), so each target k/N of the total takes
    the nearest stage deeper than the previous pick; fewer than n points come back when stages run out.
    """
    total = cumulative[-1]
    points: list[int] = []
    for k in range(1, n + 1):
        target = total * k / (n + 1)
        free = [i for i in range(len(cumulative)) if not points or i > points[-1]]
        if not free:
            break
        points.append(min(free, key=lambda i: (abs(cumulative[i] - target), i)))
    return points


@torch.inference_mode()
def probe_features(net: MultiExitSegmenter, input_hw: tuple[int, int]) -> list[torch.Tensor]:
    """Every stage's output for a zero frame (shapes for the head and decoder profiles)."""
    with eval_mode(net):
        return net.encode(torch.zeros(1, 3, *input_hw), [FINAL])


@torch.inference_mode()
def gflops_table(net: MultiExitSegmenter, input_hw: tuple[int, int]) -> CostTable:
    """Table 1's terms in GFLOPs for frames of `input_hw`: stage prefixes, every candidate head, the decoder."""
    feats = probe_features(net, input_hw)
    with eval_mode(net):
        heads = {k: count_call_gflops(lambda k=k: net.exit_native(k, feats)) for k in [*net.exit_keys, FINAL]}
    return CostTable("gflops", stage_gflops(net.base, input_hw), heads, {k: 0.0 for k in net.exit_keys})


def median_ms(fn: Callable[[], object], warmup: int, runs: int) -> float:
    for _ in range(warmup):  # first passes pick oneDNN kernels and grow the allocator's pools
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


@torch.inference_mode()
def latency_table(
    net: MultiExitSegmenter, input_hw: tuple[int, int], threads: int = 1, warmup: int = 2, runs: int = 10,
    pixel_threshold: float = 0.8, edge_smoothing: bool = True,
) -> CostTable:
    """Table 1's terms in milliseconds on this CPU with `threads` torch threads (restored afterwards).

    backbone[i] times frame -> stage i directly (input preparation included) rather than summing segments;
    heads time the head plus the resize to frame size; policy times eq. 7-9 on the exit's native map.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with eval_mode(net):
            frame = torch.rand(1, 3, *input_hw)
            x_fn = lambda i: net.base.encoder.forward_intermediates(encoder_input(net.base, frame), [i], stop_early=True)  # noqa: E731
            backbone = [median_ms(lambda i=i: x_fn(i), warmup, runs) for i in range(len(net.feature_info))]
            feats = net.encode(frame, [FINAL])
            heads = {k: median_ms(lambda k=k: resize(net.exit_native(k, feats), input_hw), warmup, runs) for k in [*net.exit_keys, FINAL]}
            natives = {k: net.exit_native(k, feats)[0] for k in net.exit_keys}
            policy = {k: median_ms(lambda k=k: logits_confidence(natives[k], pixel_threshold, edge_smoothing), warmup, runs) for k in net.exit_keys}
    finally:
        torch.set_num_threads(previous)
    return CostTable("ms", backbone, heads, policy)
