"""Shift specs: the text form of a distribution shift, and applying it to frames deterministically.

A shift is written `clean` (or ""), `NAME:SEVERITY` for the 15 ImageNet-C corruptions
(Hendrycks & Dietterich, ICLR 2019; severity 1..5, e.g. `fog:3`), a bare `dusk` or `night`, or a
stream of conditions over a frame sequence, `stream:...` (syntax in stream.py, e.g. `stream:mixed`).

Every frame's randomness comes from `np.random.default_rng([seed, index, stable_hash(name), severity])`,
so frame i under a shift looks the same in every run, process and data-loader worker, whatever order
frames are read in, and differs between frames, seeds and shifts.
"""

from __future__ import annotations

import numpy as np

from tandemseg.data.base import SegDataset
from tandemseg.data.shifts.condition import (
    FrameShiftDataset,
    Shift,
    apply_condition,
    parse_condition,
    stable_hash,
)
from tandemseg.data.shifts.stream import PREFIX, ShiftStream

__all__ = ["Shift", "ShiftStream", "ShiftedDataset", "apply_shift", "parse_shift", "stable_hash"]


def parse_shift(text: str | None) -> Shift | ShiftStream | None:
    """Parse a shift spec; `clean` or "" -> None. Raises SpecError naming the valid choices.

    A `stream:` spec gives a ShiftStream without a seed of its own: the dataset wrapper's seed orders it.
    """
    stripped = (text or "").strip()
    if stripped.lower().startswith(PREFIX):
        return ShiftStream.from_spec(stripped, seed=None)
    return parse_condition(stripped)


def apply_shift(image: np.ndarray, shift: Shift | ShiftStream | None, seed: int, index: int) -> np.ndarray:
    """Shift frame `index` of a sequence; the same (image, shift, seed, index) always gives the same output."""
    if isinstance(shift, ShiftStream):
        stream = shift if shift.seed is not None else shift.with_seed(seed)
        shift = stream.condition_at(index)
    return apply_condition(image, shift, seed, index)


class ShiftedDataset(FrameShiftDataset):
    """Wrap any dataset so every frame is shifted, deterministically per (frame index, seed, shift).

    `shift` may be one condition or a ShiftStream (then frame i gets the stream's condition for i;
    a stream without its own seed is ordered by `seed`). Labels, names, classes, split and length
    are those of the wrapped dataset.
    """

    def __init__(self, dataset: SegDataset, shift: Shift | ShiftStream, seed: int = 0) -> None:
        super().__init__(dataset, seed)
        if isinstance(shift, ShiftStream) and shift.seed is None:
            shift = shift.with_seed(seed)
        self.shift = shift

    def condition_at(self, index: int) -> Shift | None:
        if isinstance(self.shift, ShiftStream):
            return self.shift.condition_at(index)
        return self.shift
