"""The greedy oracle: the reference every policy is compared with, at the TARGET upload count.

At a target rate r on an N-frame stream the oracle uploads k = round(r N) frames chosen to raise the
stream's dataset-level mIoU most (greedy forward selection, then swap local search). It reads labels and
the cloud's output, so it is not causal; it is a search, not a proven optimum (tests/test_oracle.py
compares it with exhaustive search up to k = 5), and it is never started from any policy's selection, so
it does not depend on which policies are compared.
"""

from __future__ import annotations

import numpy as np

from tandemseg.eval.bootstrap import batched_miou
from tandemseg.eval.cache import CollabCache
from tandemseg.eval.metrics import miou_of

ORACLE = "greedy: forward selection then swap local search, at round(target rate x frames) uploads; not seeded from any policy"


def frame_gains(cache: CollabCache) -> np.ndarray:
    """Each frame's marginal gain in stream mIoU when its cloud prediction replaces the device's alone."""
    base = cache.device_cm.sum(0)
    delta = cache.cloud_cm - cache.device_cm  # (N, C, C)
    return batched_miou(base[None] + delta) - miou_of(base)


def target_count(rate: float, frames: int) -> int:
    """k = round(rate * N): the number of uploads a target rate asks for on an N-frame stream."""
    return int(round(rate * frames))


def greedy_oracle_select(cache: CollabCache, k: int, max_passes: int = 20) -> np.ndarray:
    """The greedy oracle's k frames: a search for the k cloud predictions that raise the stream's mIoU most.

    1. Greedy forward selection: k times, add the frame whose cloud prediction raises the stream's mIoU most.
    2. Swap local search: replace a chosen frame by an unchosen one while that raises mIoU (at most
       `max_passes` passes over the chosen frames).
    Dataset-level mIoU is a mean of per-class ratios, not a sum over frames, so this is a heuristic: the best
    subset may score higher (tests/test_oracle.py measures the gap against exhaustive search up to k = 5).
    It reads labels and the cloud's output (not causal) and is never started from a policy's selection, so
    the reference does not depend on the policies it is compared with.
    """
    n = cache.frames
    k = int(min(max(k, 0), n))
    delta = (cache.cloud_cm - cache.device_cm).astype(np.int64)  # (N, C, C)
    base = cache.device_cm.sum(0)
    return _swap_search(base, delta, _greedy(base, delta, k), max_passes)


def _greedy(base: np.ndarray, delta: np.ndarray, k: int) -> np.ndarray:
    """Forward selection: each step adds the frame with the largest mIoU after adding it (earliest on ties)."""
    mask = np.zeros(len(delta), dtype=bool)
    cm = base.copy()
    for _ in range(k):
        scores = batched_miou(cm[None] + delta)
        scores[mask] = -np.inf
        j = int(np.nanargmax(scores))
        mask[j] = True
        cm = cm + delta[j]
    return mask


def _swap_search(base: np.ndarray, delta: np.ndarray, mask: np.ndarray, max_passes: int) -> np.ndarray:
    """1-swap hill climbing from `mask`: best exchange per chosen frame while it strictly raises mIoU."""
    if mask.all() or not mask.any():
        return mask
    cm = base + delta[mask].sum(0)
    current = miou_of(cm)
    for _ in range(max_passes):
        improved = False
        for i in np.flatnonzero(mask):
            outside = np.flatnonzero(~mask)
            trial = batched_miou((cm - delta[i])[None] + delta[outside])
            j = int(np.nanargmax(trial))
            if trial[j] > current + 1e-12:
                mask[i], mask[outside[j]] = False, True
                cm = cm - delta[i] + delta[outside[j]]
                current = float(trial[j])
                improved = True
        if not improved:
            break
    return mask


class GreedyOracle:
    """`greedy_oracle_select` memoised by k for one cache: every policy of a sweep at a target rate shares it."""

    def __init__(self, cache: CollabCache) -> None:
        self.cache = cache
        self._masks: dict[int, np.ndarray] = {}

    def mask(self, k: int) -> np.ndarray:
        k = int(min(max(k, 0), self.cache.frames))
        if k not in self._masks:
            self._masks[k] = greedy_oracle_select(self.cache, k)
        return self._masks[k].copy()

    def at_rate(self, rate: float) -> np.ndarray:
        """The oracle's choice at the target count round(rate * N)."""
        return self.mask(target_count(rate, self.cache.frames))
