"""Distribution shifts: the 15 ImageNet-C corruptions (Hendrycks & Dietterich, ICLR 2019), severities
1..5, the `dusk` and `night` lighting shifts, and streams of them for continual adaptation.

    from tandemseg.data.shifts import parse_shift, ShiftedDataset
    shifted = ShiftedDataset(dataset, parse_shift("fog:3"), seed=0)
"""

from tandemseg.data.shifts.bench import benchmark_shifts
from tandemseg.data.shifts.registry import CORRUPTIONS, SEVERITY_FREE, SHIFT_FAMILIES, SHIFTS, ShiftFn
from tandemseg.data.shifts.spec import Shift, ShiftedDataset, apply_shift, parse_shift, stable_hash
from tandemseg.data.shifts.stream import STREAM_POOLS, ShiftStream, StreamDataset

__all__ = [
    "CORRUPTIONS",
    "SEVERITY_FREE",
    "SHIFTS",
    "SHIFT_FAMILIES",
    "STREAM_POOLS",
    "Shift",
    "ShiftFn",
    "ShiftStream",
    "ShiftedDataset",
    "StreamDataset",
    "apply_shift",
    "benchmark_shifts",
    "parse_shift",
    "stable_hash",
]
