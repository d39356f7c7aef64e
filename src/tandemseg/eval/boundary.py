"""Boundary F-score: how well a label map's contours match the ground truth's (what CFE is for).

A pixel is a boundary pixel when a 4-neighbour has another class (pixels next to or at `ignore` never count).
A predicted boundary pixel is matched when a ground-truth boundary pixel lies within `tolerance` pixels (a
(2t+1)^2 square, i.e. Chebyshev distance), and vice versa; precision, recall and F come from the counts summed
over frames, so per-frame counts (`boundary_counts`) combine like confusion matrices: any mix of frames (a
policy's uploads) is scored exactly. Reading of "pixels within a few pixels of a class edge": t = 3 at 360x480.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_TOLERANCE = 3


def boundaries(label: np.ndarray, ignore_index: int | None = 255) -> np.ndarray:
    """(H, W) class map -> (H, W) bool: pixels with a 4-neighbour of another class (ignored pixels excluded)."""
    lab = np.asarray(label)
    edge = np.zeros(lab.shape, bool)
    dv, dh = lab[1:] != lab[:-1], lab[:, 1:] != lab[:, :-1]
    edge[1:] |= dv
    edge[:-1] |= dv
    edge[:, 1:] |= dh
    edge[:, :-1] |= dh
    if ignore_index is not None:
        bad = lab == ignore_index
        near_bad = dilate(bad, 1)
        edge &= ~near_bad
    return edge


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """(H, W) bool dilated by a (2r+1)^2 square."""
    if radius <= 0:
        return mask
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]  # (1, 1, H, W)
    return F.max_pool2d(t, 2 * radius + 1, stride=1, padding=radius)[0, 0].numpy() > 0


def boundary_counts(pred: np.ndarray, label: np.ndarray, ignore_index: int | None = 255,
                    tolerance: int = DEFAULT_TOLERANCE) -> np.ndarray:
    """-> int64 (4,): [matched predicted, predicted, matched ground-truth, ground-truth] boundary pixels."""
    pred = np.where(np.asarray(label) == ignore_index, ignore_index, pred) if ignore_index is not None else pred
    bp, bg = boundaries(pred, ignore_index), boundaries(label, ignore_index)
    matched_p = bp & dilate(bg, tolerance)
    matched_g = bg & dilate(bp, tolerance)
    return np.array([matched_p.sum(), bp.sum(), matched_g.sum(), bg.sum()], dtype=np.int64)


def boundary_f(counts: np.ndarray) -> float | None:
    """F of summed counts (..., 4) -> float (None when there are no boundaries at all)."""
    c = np.asarray(counts, dtype=np.float64).reshape(-1, 4).sum(0)
    if c[1] == 0 or c[3] == 0:
        return None
    precision, recall = c[0] / c[1], c[2] / c[3]
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def resampled_boundary_f(frame_counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Bootstrap: (N, 4) per-frame counts, (B, N) resample weights -> (B,) F per resample."""
    c = weights @ np.asarray(frame_counts, dtype=np.float64)  # (B, 4)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision, recall = c[:, 0] / c[:, 1], c[:, 2] / c[:, 3]
        return 2 * precision * recall / (precision + recall)
