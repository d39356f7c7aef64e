"""Dataset statistics: frame count, image sizes, class frequencies and the share of ignored pixels."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

import numpy as np

from tandemseg.data.base import SegDataset

# progress(items, total) -> the same items, e.g. wrapped in a progress bar
Progress = Callable[[Iterable[int], int], Iterable[int]]


def _frame_count(dataset: SegDataset, limit: int | None) -> int:
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    return len(dataset) if limit is None else min(limit, len(dataset))


def dataset_stats(dataset: SegDataset, limit: int | None = None, progress: Progress | None = None) -> dict:
    """Read the first `limit` frames (all by default) and summarise them.

    Returns `frames`, `image_sizes` ({"HxW": count}), `class_frequency` ({name: fraction of labelled
    pixels}), `ignored_fraction` (ignored / all pixels), `labelled_pixels`, `pixels` and `classes`
    (the class table as JSON). Every frame goes through the loader, so a bad file raises DataError.
    """
    classes = dataset.classes
    frames = _frame_count(dataset, limit)
    counts = np.zeros(classes.num_classes, dtype=np.int64)
    sizes: Counter[str] = Counter()
    pixels = ignored = 0
    indices: Iterable[int] = range(frames)
    for i in progress(indices, frames) if progress else indices:
        label = dataset[i].label
        sizes[f"{label.shape[0]}x{label.shape[1]}"] += 1
        pixels += label.size
        keep = label != classes.ignore_index
        ignored += int(label.size - keep.sum())
        counts += np.bincount(label[keep].ravel(), minlength=classes.num_classes)[: classes.num_classes]
    labelled = int(counts.sum())
    freq = counts / labelled if labelled else np.full(classes.num_classes, np.nan)
    return {
        "frames": frames,
        "image_sizes": dict(sizes.most_common()),
        "class_frequency": {name: float(f) for name, f in zip(classes.names, freq, strict=True)},
        "ignored_fraction": ignored / pixels if pixels else float("nan"),
        "labelled_pixels": labelled,
        "pixels": pixels,
        "classes": classes.to_json(),
    }
