"""One shift condition (`fog:3`, `dusk`): its value type, its parser and its seeded application.

Kept apart from spec.py so that both spec.py (which also parses streams) and stream.py can use it
without importing each other.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from tandemseg.data.base import Sample, SegDataset
from tandemseg.data.classes import ClassTable
from tandemseg.data.shifts.registry import SEVERITIES, SEVERITY_FREE, SHIFTS
from tandemseg.errors import SpecError

CLEAN = "clean"


@dataclass(frozen=True)
class Shift:
    """A named shift at a severity (1..5), or severity 0 for the severity-free lighting shifts."""

    name: str
    severity: int = 0

    def __post_init__(self) -> None:
        if self.name not in SHIFTS:
            raise SpecError(f"unknown shift {self.name!r}; valid: {valid_names()}")
        if self.name in SEVERITY_FREE and self.severity != 0:
            raise SpecError(f"shift {self.name!r} takes no severity (use severity 0)")
        if self.name not in SEVERITY_FREE and self.severity not in SEVERITIES:
            raise SpecError(f"shift {self.name!r} needs a severity 1..5, got {self.severity!r}")

    def __str__(self) -> str:
        return self.name if self.severity == 0 else f"{self.name}:{self.severity}"


def stable_hash(text: str) -> int:
    """A hash of `text` that is the same in every process (Python's str hash is salted per run)."""
    return zlib.crc32(text.encode("utf-8"))


def valid_names() -> str:
    """The condition names for error messages."""
    return ", ".join([CLEAN, *SHIFTS])


def parse_condition(text: str) -> Shift | None:
    """Parse `clean`/"" (-> None), `NAME:SEVERITY` for corruptions or a bare `NAME` for dusk/night."""
    text = (text or "").strip().lower()
    if text in ("", CLEAN):
        return None
    name, colon, level = text.partition(":")
    name = name.strip()
    if name not in SHIFTS:
        raise SpecError(f"unknown shift {name!r} in {text!r}; valid: {valid_names()} (or a stream such as stream:mixed)")
    if name in SEVERITY_FREE:
        if colon:
            raise SpecError(f"shift {name!r} takes no severity; write just {name!r}")
        return Shift(name, 0)
    if not colon:
        raise SpecError(f"shift {name!r} needs a severity 1..5, e.g. {name}:3")
    try:
        severity = int(level.strip())
    except ValueError:
        raise SpecError(f"severity in {text!r} must be an integer 1..5, e.g. {name}:3") from None
    if severity not in SEVERITIES:
        raise SpecError(f"severity {severity} in {text!r} is out of range; it must be 1..5")
    return Shift(name, severity)


def shift_rng(shift: Shift, seed: int, index: int) -> np.random.Generator:
    """The generator for one (frame index, seed, shift): independent of call order and process."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and frame index must be >= 0, got seed={seed}, index={index}")
    return np.random.default_rng([seed, index, stable_hash(shift.name), shift.severity])


def apply_condition(image: np.ndarray, shift: Shift | None, seed: int, index: int) -> np.ndarray:
    """Apply one condition to an (H, W, 3) uint8 frame; `None` (clean) returns the frame unchanged."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"shifts take (H, W, 3) uint8 images, got {image.shape} {image.dtype}")
    if shift is None:
        return image
    return SHIFTS[shift.name](image, shift.severity, shift_rng(shift, seed, index))


class FrameShiftDataset:
    """Base of the dataset wrappers: frame i is shifted by `condition_at(i)`, seeded by (seed, i).

    Labels and names pass through unchanged; `classes`, `split` and `len` are the wrapped dataset's.
    """

    def __init__(self, dataset: SegDataset, seed: int = 0) -> None:
        self.dataset = dataset
        self.seed = seed

    @property
    def classes(self) -> ClassTable:
        return self.dataset.classes

    @property
    def split(self) -> str:
        return self.dataset.split

    def __len__(self) -> int:
        return len(self.dataset)

    def condition_at(self, index: int) -> Shift | None:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        if index < 0:  # the frame index seeds the shift, so resolve negative indices first
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} out of range for {len(self)} frames")
        sample = self.dataset[index]
        image = apply_condition(sample.image, self.condition_at(index), self.seed, index)
        return Sample(image=image, label=sample.label, name=sample.name)
