"""Dataset-level segmentation metrics from one confusion matrix over a split (as the papers report)."""

from __future__ import annotations

import numpy as np
import torch


class ConfusionMatrix:
    """Accumulates a CxC confusion matrix (rows: ground truth, cols: prediction), skipping ignored pixels."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> None:
        """Add a batch: `pred` and `target` are integer maps of the same shape (any leading dims)."""
        p = torch.as_tensor(pred).reshape(-1).long()
        t = torch.as_tensor(target).reshape(-1).long()
        if p.shape != t.shape:
            raise ValueError(f"prediction has {p.numel()} pixels but target has {t.numel()}")
        keep = t != self.ignore_index
        p, t = p[keep], t[keep]
        if t.numel() and (t.min() < 0 or t.max() >= self.num_classes):
            raise ValueError(f"target value outside 0..{self.num_classes - 1} (and not ignore {self.ignore_index})")
        if p.numel() and (p.min() < 0 or p.max() >= self.num_classes):
            raise ValueError(f"prediction value outside 0..{self.num_classes - 1}")
        idx = t * self.num_classes + p
        self.mat += torch.bincount(idx, minlength=self.num_classes**2).reshape(self.num_classes, -1).numpy()

    def merge(self, other: ConfusionMatrix) -> None:
        self.mat += other.mat

    def iou(self) -> np.ndarray:
        """Per-class IoU = TP / (TP + FP + FN); NaN for a class absent from both target and prediction."""
        tp = np.diag(self.mat).astype(np.float64)
        denom = self.mat.sum(0) + self.mat.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over classes present in the target or prediction of the split."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_acc(self) -> float:
        total = self.mat.sum()
        return float(np.trace(self.mat) / total) if total else float("nan")

    def summary(self, class_names: list[str] | tuple[str, ...] | None = None) -> dict:
        iou = self.iou()
        names = list(class_names) if class_names else [str(i) for i in range(self.num_classes)]
        return {
            "miou": self.miou(),
            "pixel_acc": self.pixel_acc(),
            "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou, strict=True)},
        }


def miou_of(cm: np.ndarray) -> float:
    """Dataset-level mIoU of one confusion matrix (same definition as ConfusionMatrix.miou)."""
    m = ConfusionMatrix(cm.shape[0])
    m.mat = cm
    return m.miou()
