"""Timing of every shift on one frame (`tandemseg bench data` reports it)."""

from __future__ import annotations

import time

import numpy as np

from tandemseg.data.shifts.condition import Shift, apply_condition
from tandemseg.data.shifts.registry import SEVERITY_FREE, SHIFTS


def textured_frame(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A deterministic (H, W, 3) uint8 test frame with gradients, edges, stripes and fine noise."""
    h, w = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    x = np.stack([xx / w, yy / h, 0.5 + 0.3 * np.sin(xx / 7.0) * np.cos(yy / 11.0)], axis=-1)
    for _ in range(12):  # flat rectangles give edges and uniform regions
        r0, c0 = rng.integers(0, h), rng.integers(0, w)
        x[r0 : r0 + rng.integers(h // 10, h // 3), c0 : c0 + rng.integers(w // 10, w // 3)] = rng.random(3)
    x += rng.normal(0, 0.04, x.shape)
    return np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)


def benchmark_shifts(size: tuple[int, int] = (360, 480), repeats: int = 5, severity: int = 3) -> dict[str, float]:
    """Median milliseconds per frame for every shift at `severity` on an (H, W) frame, after one warm-up."""
    image = textured_frame(size)
    results: dict[str, float] = {}
    for name in SHIFTS:
        shift = Shift(name, 0 if name in SEVERITY_FREE else severity)
        apply_condition(image, shift, seed=0, index=0)  # warm-up: imports, caches, FFT plans
        times = []
        for i in range(repeats):
            start = time.perf_counter()
            apply_condition(image, shift, seed=0, index=i + 1)
            times.append(time.perf_counter() - start)
        results[name] = float(np.median(times) * 1000)
    return results
