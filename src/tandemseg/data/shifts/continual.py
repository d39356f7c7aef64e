"""CEMA's continual protocol (ImageNet-C style): a split's frames played once under each corruption in turn.

    continual:SEV                  the 15 corruptions at severity SEV, in the registry's order
    continual:SEV:fog,snow,...     the listed corruptions only, in the given order

Frame i of the stream is frame i mod n of the split under corruption i // n; the shift's randomness is
seeded per (seed, i) as everywhere else.
"""

from __future__ import annotations

from tandemseg.data.base import FirstFrames, SegDataset
from tandemseg.data.shifts.condition import Shift
from tandemseg.data.shifts.registry import CORRUPTIONS
from tandemseg.data.shifts.spec import ShiftedDataset
from tandemseg.data.shifts.stream import RepeatedSchedules
from tandemseg.errors import SpecError

CONTINUAL = "continual:"


def parse_continual(text: str) -> tuple[int, tuple[str, ...]]:
    """'continual:3' -> (3, the 15 corruptions); 'continual:5:fog,snow' -> (5, ('fog', 'snow'))."""
    if not text.startswith(CONTINUAL):
        raise SpecError(f"a continual stream is written continual:SEV or continual:SEV:NAME,NAME,..., got {text!r}")
    sev_text, _, names_text = text[len(CONTINUAL):].partition(":")
    try:
        severity = int(sev_text)
    except ValueError:
        raise SpecError(f"severity {sev_text!r} in {text!r} is not a whole number 1..5") from None
    names = tuple(n.strip() for n in names_text.split(",") if n.strip()) if names_text else CORRUPTIONS
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        raise SpecError(f"unknown corruption(s) {unknown} in {text!r}; valid: {', '.join(CORRUPTIONS)}")
    for n in names:
        Shift(n, severity)  # checks the severity
    return severity, names


def continual_stream(dataset: SegDataset, text: str, frames_per_condition: int | None = None, seed: int = 0) -> RepeatedSchedules:
    """The stream of `text` over `dataset` (its first `frames_per_condition` frames under each corruption)."""
    severity, names = parse_continual(text)
    base = dataset if frames_per_condition is None else FirstFrames(dataset, frames_per_condition)
    return RepeatedSchedules([ShiftedDataset(base, Shift(n, severity), seed=seed) for n in names])
