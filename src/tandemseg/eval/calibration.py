"""The eq. 5 statistics of a calibration set (ACDC sec. 3.2), computed once and kept on disk.

Fitting U needs, per labelled calibration frame, the device's correctness and its coarse class
probabilities (device/uncertainty.py `model_frame_stats`); that pass is the slow part of a fit. It is
keyed by the run's identity (checkpoint, data, split, conditions, passes, frames, seed), so refits with
other lambda / gamma / kernel settings reuse it and take milliseconds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import nn

from tandemseg.data.base import SegDataset
from tandemseg.device.uncertainty import FrameStats, load_stats, model_frame_stats, save_stats
from tandemseg.eval.cache import checkpoint_identity
from tandemseg.heap import HeapTrimmer

STATS_VERSION = "v3"


def calibration_frames(datasets: Sequence[SegDataset], passes: int, frames: int):
    """(pass, index, sample): pass p shows frame i under condition number (i + p) mod k."""
    for p in range(passes):
        for i in range(frames):
            yield p, i, datasets[(i + p) % len(datasets)][i]


def load_or_compute_stats(
    model: nn.Module, ckpt: str | Path, data: str, split: str, conditions: list[str], datasets: Sequence[SegDataset],
    passes: int, frames: int, seed: int, cache_dir: Path | None, on_frame: Callable[[], None] | None = None,
) -> tuple[list[FrameStats], Path | None]:
    """Per-frame eq. 5 statistics of the calibration stream, from `cache_dir` when there; returns them and the file
    they were read from (None when computed)."""
    identity = [STATS_VERSION, str(Path(ckpt).resolve()), checkpoint_identity(ckpt), data, split, conditions, passes, frames, seed]
    key = hashlib.sha1(json.dumps(identity).encode()).hexdigest()[:16]
    path = cache_dir / f"ustats-{key}.npz" if cache_dir else None
    if path is not None and path.is_file():
        return load_stats(path), path
    ignore = datasets[0].classes.ignore_index
    stats = []
    heap = HeapTrimmer()
    for _, _, s in calibration_frames(datasets, passes, frames):
        stats.append(model_frame_stats(model, s.image, s.label, ignore))
        heap.tick()
        if on_frame:
            on_frame()
    if path is not None:
        save_stats(path, stats)
    return stats, None
