"""Cost of a segmenter on CPU: parameters, FLOPs, latency, peak memory.

What each number means (so the table in docs/results/models.md can be read honestly):

* gflops: `torch.utils.flop_counter.FlopCounterMode` over one forward pass, in GFLOPs where one
  multiply-add counts as 2 FLOPs (the tool's convention: FLOPs = 2 x MACs). It counts convolutions
  and matrix products only; element-wise ops, BatchNorm in eval, pooling and interpolation
  (including the device's antialiased downsample) are not counted, as in most papers' tables.
* latency_ms_median / latency_ms_p90: wall time (`time.perf_counter`) of one forward pass on a
  random input of `input_shape` under `torch.inference_mode`, after `warmup` untimed passes, with
  `torch.set_num_threads(threads)` (the previous setting is restored afterwards).
* peak_memory_mb: how far the resident set size (RSS) of a fresh `spawn`ed child process rises
  above its RSS just before inference while it runs forward passes. In the child, torch is
  imported, the model loaded and the input allocated first; then the address space's RSS
  high-water mark is reset to the current RSS (`/proc/self/clear_refs` = 5, Linux >= 4.0) and read
  back after inference as `VmHWM` from `/proc/self/status`. That is the working memory of inference
  as the OS sees it: activations, oneDNN scratch buffers and allocator slack, not only tensors.
  A child is used so nothing that ran before (training, other models) is in the high-water mark.
  `getrusage(RUSAGE_SELF).ru_maxrss` is deliberately not used on Linux: the kernel carries the
  high-water mark of the process a child was forked from across `exec`, so in a spawned child it
  reads the parent's RSS whenever the parent is larger (this module measured exactly that bug).
  Without /proc (macOS), ru_maxrss is the fallback: baseline and peak are then both high-water
  marks, the rise is a lower bound and the result says `hwm_reset: false`. peak_rss_mb is the
  child's total peak for scale.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn

from tandemseg.models.flops import count_gflops


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (same as numpy's default), without importing numpy here."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@torch.inference_mode()
def measure_latency(model: nn.Module, input_shape: tuple[int, ...], threads: int = 2, warmup: int = 3, runs: int = 20) -> dict:
    """Median and p90 ms of one forward pass with `threads` torch threads (restored afterwards)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.rand(input_shape)
        for _ in range(warmup):  # first passes pick oneDNN kernels and grow the allocator's pools
            model(x)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1000.0)
    finally:
        torch.set_num_threads(previous)
    return {"latency_ms_median": statistics.median(times), "latency_ms_p90": _percentile(times, 90)}


def _maxrss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1024.0 * 1024.0) if sys.platform == "darwin" else kb / 1024.0  # bytes on macOS, KiB on Linux


def _proc_status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status ('VmRSS', 'VmHWM') in MiB; None without /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0  # the kernel reports kB
    except OSError:
        pass
    return None


def _reset_high_water_mark() -> bool:
    """Set this address space's RSS high-water mark (VmHWM) to the current RSS; False where the OS cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _memory_child(model: nn.Module, input_shape: tuple[int, ...], threads: int, runs: int, queue) -> None:
    """In a fresh process: RSS just before inference and the RSS high-water mark after `runs` forward passes."""
    torch.set_num_threads(threads)
    model.eval()
    x = torch.rand(input_shape)
    exact = _reset_high_water_mark() and _proc_status_mb("VmRSS") is not None
    before = _proc_status_mb("VmRSS") if exact else _maxrss_mb()
    with torch.inference_mode():
        for _ in range(runs):
            model(x)
    after = _proc_status_mb("VmHWM") if exact else _maxrss_mb()
    queue.put({"peak_memory_mb": max(0.0, after - before), "peak_rss_mb": after, "hwm_reset": exact})


def measure_peak_memory(model: nn.Module, input_shape: tuple[int, ...], threads: int = 2, runs: int = 2, timeout: float = 300.0) -> dict:
    """Peak RSS rise during inference, measured in a spawned child (see the module docstring)."""
    ctx = mp.get_context("spawn")  # a fresh interpreter: a forked child would share this one's heap and threads
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_child, args=(model.cpu(), tuple(input_shape), threads, runs, queue), daemon=True)
    proc.start()
    try:
        result = queue.get(timeout=timeout)
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
    return result


def profile_model(
    model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 360, 480), threads: int = 2, warmup: int = 3, runs: int = 20,
    memory: bool = True,
) -> dict:
    """Parameters, GFLOPs, CPU latency (median, p90) and peak memory of `model` on `input_shape`.

    The model is profiled in eval mode and returned to its previous mode. `memory=False` skips the
    child process (it costs an interpreter start and a torch import, a few seconds).
    """
    was_training = model.training
    model.eval()
    try:
        result: dict = {
            "parameters": count_parameters(model),
            "gflops": count_gflops(model, input_shape),
            **measure_latency(model, input_shape, threads, warmup, runs),
            "threads": threads,
            "input_shape": list(input_shape),
        }
        if memory:
            result.update(measure_peak_memory(model, input_shape, threads))
    finally:
        model.train(was_training)
    return result


def profile_fusion(fusion_step, device_model: nn.Module, input_hw: tuple[int, int], threads: int = 1, warmup: int = 3,
                   runs: int = 20, seed: int = 0) -> dict:
    """What CFE adds to a frame on the device (ACDC sec. 3.2.3): the runtime's model step (`run_device`: the network,
    the upsampling and the label map), then the fuse step for a frame the cloud did not answer (refinement) and for
    an answered one (refinement + fusion, the reply's 4-bit probabilities unpacked), interleaved so load drifts hit
    all three alike. Medians in ms and the refinement's overhead as a fraction of the model step."""
    from tandemseg.device.steps import run_device
    from tandemseg.wire.messages import CloudReply
    from tandemseg.wire.payload import CLOUD_PROB_LEVELS, pack_probs

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rng = np.random.default_rng(seed)
        h, w = input_hw
        frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        num_classes = fusion_step.fusion.cfg.num_classes
        cloud = rng.dirichlet(np.ones(num_classes), size=(max(1, h // 4), max(1, w // 4))).transpose(2, 0, 1)  # (C, h/4, w/4)
        reply = CloudReply(0, b"")
        reply.probs, reply.probs_shape = pack_probs(cloud, CLOUD_PROB_LEVELS)
        out = run_device(device_model, frame)
        steps = {"device_step_ms": lambda: run_device(device_model, frame), "cfe_local_ms": lambda: fusion_step.local(out),
                 "cfe_answered_ms": lambda: fusion_step.fuse(out, out.pred, reply)}
        times: dict[str, list[float]] = {k: [] for k in steps}
        for i in range(warmup + runs):
            for key, fn in steps.items():
                t0 = time.perf_counter()
                fn()
                if i >= warmup:
                    times[key].append((time.perf_counter() - t0) * 1000.0)
    finally:
        torch.set_num_threads(previous)
    result = {k: statistics.median(v) for k, v in times.items()}
    result["cfe_local_overhead"] = result["cfe_local_ms"] / result["device_step_ms"]
    result["cfe_answered_overhead"] = result["cfe_answered_ms"] / result["device_step_ms"]
    return result
