"""Evaluate a segmenter over a dataset split: one confusion matrix, dataset-level mIoU."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from tandemseg.data.base import SegDataset
from tandemseg.data.tensors import to_tensor
from tandemseg.eval.metrics import ConfusionMatrix

__all__ = ["batches", "evaluate", "to_tensor"]  # to_tensor lives in data/tensors.py; kept importable from here


def batches(dataset: SegDataset, batch_size: int, limit: int | None = None) -> Iterator[tuple[list[int], list]]:
    """Consecutive batches of samples; frames of different sizes go in separate batches."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    idx: list[int] = []
    samples: list = []
    for i in range(n):
        s = dataset[i]
        if samples and s.image.shape != samples[0].image.shape:
            yield idx, samples
            idx, samples = [], []
        idx.append(i)
        samples.append(s)
        if len(samples) == batch_size:
            yield idx, samples
            idx, samples = [], []
    if samples:
        yield idx, samples


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: SegDataset, batch_size: int = 4, limit: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict:
    """Returns {'miou', 'per_class_iou', 'pixel_acc', 'frames'} for `model` on `dataset`."""
    model.eval()
    cm = ConfusionMatrix(dataset.classes.num_classes, dataset.classes.ignore_index)
    frames = 0
    for _, samples in batches(dataset, batch_size, limit):
        logits = model(to_tensor([s.image for s in samples]))  # (N, C, H, W)
        cm.update(logits.argmax(1), torch.from_numpy(np.stack([s.label for s in samples])))
        frames += len(samples)
        if on_batch:
            on_batch(len(samples))
    return {**cm.summary(dataset.classes.names), "frames": frames}
