"""Image-level confidence of a dense prediction (MESS, paper 003, sec. 5.2, eq. 7-9).

One implementation for both users: the input-dependent exit policy of a multi-exit network (an exit is
taken when its image confidence clears the exit's threshold) and the device's `confidence` upload policy
(which sends the frames whose confidence is low).

    eq. 7   c_img = (1 / RC) sum_rc 1(c_map[r, c] >= th_pix)          c_map = top-1 probability
    eq. 8   M = semantic edges of the predicted label map, widened by the exit's output stride s
    eq. 9   c_map[r, c] <- median of c_map over the (4 s + 1)^2 window around (r, c)   where M = 1

The maps are read at the resolution they are computed at (an exit's native map, the device's coarse map),
where one pixel is one output-stride cell of the frame; there `stride` = 1 is the paper's s_i.
This module imports nothing from tandemseg, so `device/` can use it without pulling in the exits network.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage


def semantic_edges(pred: np.ndarray, stride: int) -> np.ndarray:
    """Eq. 8: label boundaries of the predicted map (where a 4-neighbour differs), widened by `stride` pixels.

    The paper writes erode(cannyEdge(y_hat), s); eroding a one-pixel edge map would empty it, so we read it
    as growing the edge band by the output stride (a Canny detector on a piecewise-constant label map
    fires exactly at label changes).
    """
    edge = np.zeros(pred.shape, dtype=bool)
    edge[:-1, :] |= pred[:-1, :] != pred[1:, :]
    edge[1:, :] |= pred[1:, :] != pred[:-1, :]
    edge[:, :-1] |= pred[:, :-1] != pred[:, 1:]
    edge[:, 1:] |= pred[:, 1:] != pred[:, :-1]
    return ndimage.binary_dilation(edge, iterations=stride) if stride > 0 else edge


def confidence_map(probs: torch.Tensor, edge_smoothing: bool = True, stride: int = 1) -> np.ndarray:
    """c_map of eq. 7 (top-1 probability) for a (C, h, w) probability map, edge-smoothed by eq. 9 when asked."""
    top1, pred = probs.detach().cpu().max(0)  # (h, w) each
    conf = top1.numpy()
    if not edge_smoothing:
        return conf
    edges = semantic_edges(pred.numpy(), stride)
    # Eq. 9's window w_l = {l - 2 os, ..., l + 2 os}: 4 os + 1 pixels per side.
    smoothed = ndimage.median_filter(conf, size=4 * stride + 1, mode="nearest")
    return np.where(edges, smoothed, conf)


def image_confidence(probs: torch.Tensor, pixel_threshold: float, edge_smoothing: bool = True, stride: int = 1) -> float:
    """MESS eq. 7 (with eq. 8-9 when `edge_smoothing`): fraction of confident pixels of a (C, h, w) map."""
    return float((confidence_map(probs, edge_smoothing, stride) >= pixel_threshold).mean())


def image_confidences(
    probs: torch.Tensor, pixel_thresholds: Sequence[float], edge_smoothing: bool = True, stride: int = 1,
) -> np.ndarray:
    """Eq. 7 at several pixel thresholds from one smoothed map (what the configuration search caches): (P,)."""
    conf = confidence_map(probs, edge_smoothing, stride)
    return np.array([(conf >= t).mean() for t in pixel_thresholds], dtype=np.float64)


def mean_confidence(probs: torch.Tensor) -> float:
    """The averaging baseline of Fig. 4 / Table 9: mean top-1 probability over the (C, h, w) map."""
    return float(probs.max(0).values.mean())


def logits_confidence(logits: torch.Tensor, pixel_threshold: float, edge_smoothing: bool = True, stride: int = 1) -> float:
    """Eq. 7-9 on one exit's (C, h, w) logits: softmax over classes first (float32, so ties match the cache)."""
    return image_confidence(logits.float().softmax(0), pixel_threshold, edge_smoothing, stride)
