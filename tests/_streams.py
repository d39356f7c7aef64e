"""Synthetic per-frame caches for the evaluation tests: confusion matrices, coarse probabilities, payload sizes.

No model runs: the oracle, the bootstrap, the sweeps and the replay path need nothing else.
"""

from __future__ import annotations

import numpy as np
import torch

from tandemseg.data.classes import ClassTable
from tandemseg.eval import cache as K


def classes(c: int) -> ClassTable:
    return ClassTable(tuple(f"k{i}" for i in range(c)), ((0, 0, 0),) * c)


def dense_cache(n: int, seed: int, c: int = 5) -> K.CollabCache:
    """Every class in most frames, the cloud right more often than the device (random confusion counts)."""
    rng = np.random.default_rng(seed)

    def cms(diag_weight: int) -> np.ndarray:
        m = rng.integers(0, 20, (n, c, c))
        m[:, np.arange(c), np.arange(c)] += rng.integers(0, diag_weight, (n, c))
        m[rng.random((n, c)) < 0.3] = 0  # classes absent from some frames, as in real scenes
        return m

    return from_cms(cms(60), cms(200), seed)


def sparse_cache(n: int, seed: int, c: int = 8) -> K.CollabCache:
    """Frames holding 1-3 classes of very different sizes: dataset mIoU is far from a sum over frames."""
    rng = np.random.default_rng(seed)
    dev = np.zeros((n, c, c), np.int64)
    cloud = np.zeros((n, c, c), np.int64)
    for i in range(n):
        for a in rng.choice(c, size=rng.integers(1, 4), replace=False):
            size = int(rng.integers(5, 400))
            for m, acc in ((dev, rng.uniform(0.2, 0.9)), (cloud, rng.uniform(0.5, 1.0))):
                right = int(size * acc)
                m[i, a, a] += right
                m[i, a, rng.integers(0, c)] += size - right
    return from_cms(dev, cloud, seed)


def from_cms(device_cm: np.ndarray, cloud_cm: np.ndarray, seed: int = 0, groups: np.ndarray | None = None,
             bytes_up: np.ndarray | None = None, hw: tuple[int, int] = (6, 8)) -> K.CollabCache:
    """A cache around given per-frame matrices, with seeded coarse probabilities (policies score them),
    cloud label maps at twice the coarse size (DCAM reads them) and payload sizes."""
    n, c, _ = device_cm.shape
    gen = torch.Generator().manual_seed(seed)
    # logits of random sharpness per frame: mean entropies from near 0 to near ln C, so every score varies
    sharp = 2 + 8 * torch.rand(n, generator=gen)
    probs = [(sharp[i] * torch.randn(c, *hw, generator=gen)).softmax(0) for i in range(n)]
    rng = np.random.default_rng(seed)
    pred = [rng.integers(0, c, (2 * hw[0], 2 * hw[1])).astype(np.uint8) for _ in range(n)]
    up = np.full(n, 1000) if bytes_up is None else np.asarray(bytes_up)
    return K.CollabCache(classes(c), probs, device_cm, cloud_cm, pred, up, np.full(n, 100), np.ones(n), np.ones(n), ["clean"] * n,
                         groups=groups)
