"""Cached per-exit predictions on a calibration split: what the configuration search combines (MESS sec. 5.1,
'prediction memoisation'). Every candidate exit runs once per frame; the search never runs the network.

Per frame and exit the cache keeps the confusion matrix against the labels (so any mix of exits gives an
exact dataset-level mIoU) and the image-level confidence (eq. 7-9) at every candidate pixel threshold.
Calibrate on training frames, never on the split the results are reported on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tandemseg.exits.confidence import image_confidences
from tandemseg.exits.costs import eval_mode
from tandemseg.exits.network import FINAL, MultiExitSegmenter
from tandemseg.models.blocks import resize

DEFAULT_PIXEL_THRESHOLDS = (0.7, 0.8, 0.9)


@dataclass
class ExitCache:
    """keys/stages: candidate exits in depth order, 'final' last. cms (F, E, C, C) int64 (rows: label);
    confidence (F, E, P): eq. 7(-9) at `pixel_thresholds[p]`."""

    keys: list[str]
    stages: list[int]
    cms: np.ndarray
    confidence: np.ndarray
    pixel_thresholds: list[float]
    edge_smoothing: bool = True

    @property
    def frames(self) -> int:
        return int(self.cms.shape[0])

    def index(self, key: str) -> int:
        return self.keys.index(key)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            path, keys=np.array(self.keys), stages=np.array(self.stages), cms=self.cms, confidence=self.confidence,
            pixel_thresholds=np.array(self.pixel_thresholds), edge_smoothing=np.array(self.edge_smoothing),
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> ExitCache:
        with np.load(path) as z:
            return cls([str(k) for k in z["keys"]], [int(s) for s in z["stages"]], z["cms"], z["confidence"],
                       [float(t) for t in z["pixel_thresholds"]], bool(z["edge_smoothing"]))


def frame_confusion(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore: int = 255) -> np.ndarray:
    """(C, C) confusion matrix of one frame, rows = label, columns = prediction, ignored pixels skipped."""
    keep = target != ignore
    idx = target[keep].astype(np.int64) * num_classes + pred[keep].astype(np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@torch.inference_mode()
def collect_cache(
    net: MultiExitSegmenter, samples: Iterable[tuple[torch.Tensor, np.ndarray | torch.Tensor]],
    pixel_thresholds: Sequence[float] = DEFAULT_PIXEL_THRESHOLDS, edge_smoothing: bool = True, ignore: int = 255,
) -> ExitCache:
    """Run every candidate exit and the final exit on each (frame (3, H, W) in [0,1], label (H, W)) sample."""
    keys = [*net.exit_keys, FINAL]
    cms, confs = [], []
    with eval_mode(net):
        for frame, label in samples:
            target = np.asarray(label)
            feats = net.encode(frame[None], keys)
            frame_cms, frame_conf = [], []
            for k in keys:
                native = net.exit_native(k, feats)  # (1, C, h, w)
                pred = resize(native, target.shape).argmax(1)[0]  # (H, W): the full-size map the exit answers with
                frame_cms.append(frame_confusion(pred.numpy(), target, net.num_classes, ignore))
                # Confidence on the native map, as the input-dependent policy computes it at run time.
                frame_conf.append(image_confidences(native[0].float().softmax(0), pixel_thresholds, edge_smoothing))
            cms.append(np.stack(frame_cms))
            confs.append(np.stack(frame_conf))
    return ExitCache(keys, [net.stage_of(k) for k in keys], np.stack(cms), np.stack(confs), list(pixel_thresholds), edge_smoothing)
