"""Shift streams: a seeded schedule of conditions over a frame sequence, for continual adaptation.

A stream says which condition (a `Shift`, or None for clean) frame i of a sequence is under. Two kinds
of schedule, written after `stream:` wherever a shift is accepted (e.g. the CLI's `--shift`):

  stream:POOL[/SEGMENT]            cycle through a named pool of conditions in a seeded random
                                   order, each held for SEGMENT frames (default 50), repeating the
                                   same order for as long as the sequence lasts.
                                   Pools: mixed, lighting, weather, noise, blur, digital, corruptions.
  stream:COND,COND,...[/SEGMENT]   the same, over the listed conditions, e.g. stream:clean,fog:3,night/25
  stream:COND@A-B,COND@A-B,...     an explicit schedule: COND on frames A..B inclusive; `A-` runs to
                                   the end. Frames outside every range are clean. Ranges may not
                                   overlap, e.g. stream:fog:3@0-99,dusk@100-199,night@200-

Conditions are as everywhere else: clean, NAME:SEVERITY for the 15 corruptions, dusk, night.

A split can be played several times back to back under different seeded schedules (`RepeatedSchedules`,
`collab --repeat-schedules K`): a longer evaluation stream from the same labelled frames.

Seeds. The order of a cycling stream comes from `ShiftStream.seed`. A stream parsed from text
(`parse_shift("stream:mixed")`) has seed None: the dataset wrapper it is given to supplies its own
seed, so the CLI's `--seed` changes both the order and the per-frame noise. A stream built with an
explicit seed keeps its order whatever the wrapper's seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from tandemseg.data.base import Sample, SegDataset
from tandemseg.data.classes import ClassTable
from tandemseg.data.shifts.condition import CLEAN, FrameShiftDataset, Shift, parse_condition, stable_hash
from tandemseg.data.shifts.registry import CORRUPTIONS
from tandemseg.errors import SpecError

PREFIX = "stream:"
DEFAULT_SEGMENT = 50

STREAM_POOLS: dict[str, tuple[str, ...]] = {
    # one or two conditions from every family at severity 3, plus clean frames to return to
    "mixed": (
        "clean", "dusk", "night", "fog:3", "snow:3", "frost:3", "gaussian_noise:3",
        "motion_blur:3", "defocus_blur:3", "contrast:3", "jpeg_compression:3",
    ),
    "lighting": ("clean", "dusk", "night"),
    "weather": ("clean", "snow:3", "frost:3", "fog:3"),
    "noise": ("clean", "gaussian_noise:3", "shot_noise:3", "impulse_noise:3"),
    "blur": ("clean", "defocus_blur:3", "glass_blur:3", "motion_blur:3", "zoom_blur:3"),
    "digital": ("clean", "brightness:3", "contrast:3", "elastic_transform:3", "pixelate:3", "jpeg_compression:3"),
    "corruptions": tuple(f"{name}:3" for name in CORRUPTIONS),  # the 15 ImageNet-C ones, no clean
}


def _label(shift: Shift | None) -> str:
    return CLEAN if shift is None else str(shift)


@dataclass(frozen=True)
class Segment:
    """Condition `shift` on frames start <= i < stop (stop None: to the end of the sequence)."""

    start: int
    stop: int | None
    shift: Shift | None

    def __str__(self) -> str:
        end = "" if self.stop is None else str(self.stop - 1)
        return f"{_label(self.shift)}@{self.start}-{end}"


@dataclass(frozen=True)
class Cycle:
    """Conditions visited in a seeded random order, each for `segment` frames, repeated forever."""

    conditions: tuple[Shift | None, ...]
    segment: int = DEFAULT_SEGMENT
    pool: str | None = None  # the pool name it was written as, to print it back the same way

    def __str__(self) -> str:
        body = self.pool if self.pool is not None else ",".join(_label(c) for c in self.conditions)
        return f"{body}/{self.segment}"


@dataclass(frozen=True)
class ShiftStream:
    """A schedule of conditions over frame indices; see the module docstring for the text syntax."""

    schedule: tuple[Segment, ...] | Cycle
    seed: int | None = 0

    def __post_init__(self) -> None:
        if isinstance(self.schedule, Cycle):
            _check_cycle(self.schedule)
        else:
            object.__setattr__(self, "schedule", _check_segments(tuple(self.schedule)))

    @classmethod
    def from_spec(cls, text: str, n_frames: int | None = None, segment: int | None = None, seed: int | None = 0) -> ShiftStream:
        """Parse `mixed`, `weather/25`, `fog:3,dusk/40` or `fog:3@0-99,dusk@100-` (`stream:` optional).

        `segment` sets the hold length of a cycling stream (the text's `/N` may say it instead, not
        both differently). `n_frames`, when given, checks that an explicit schedule starts inside the
        sequence.
        """
        body = text.strip().lower()
        if body.startswith(PREFIX):
            body = body[len(PREFIX) :].strip()
        if not body:
            raise SpecError(f"empty stream in {text!r}; e.g. stream:mixed or stream:fog:3@0-99,dusk@100-199")
        if "@" in body:
            if segment is not None:
                raise SpecError(f"segment={segment} applies to cycling streams, not to the explicit schedule {text!r}")
            stream = cls(_parse_segments(body, text), seed=seed)
        else:
            stream = cls(_parse_cycle(body, text, segment), seed=seed)
        if n_frames is not None:
            stream.check_length(n_frames)
        return stream

    def with_seed(self, seed: int) -> ShiftStream:
        return replace(self, seed=seed)

    def check_length(self, n_frames: int) -> None:
        """Raise SpecError if an explicit schedule has a segment starting at or after `n_frames`."""
        if isinstance(self.schedule, Cycle):
            return
        late = [s for s in self.schedule if s.start >= n_frames]
        if late:
            raise SpecError(f"stream segment {late[0]} starts after the last frame ({n_frames} frames)")

    @cached_property
    def order(self) -> tuple[int, ...]:
        """The seeded visiting order of a cycling stream's conditions (indices into `conditions`)."""
        if not isinstance(self.schedule, Cycle):
            return ()
        rng = np.random.default_rng([self.seed or 0, stable_hash("stream-order")])
        return tuple(int(i) for i in rng.permutation(len(self.schedule.conditions)))

    def condition_at(self, index: int) -> Shift | None:
        """The condition of frame `index` (None: clean)."""
        if index < 0:
            raise ValueError(f"frame index must be >= 0, got {index}")
        if isinstance(self.schedule, Cycle):
            slot = (index // self.schedule.segment) % len(self.order)
            return self.schedule.conditions[self.order[slot]]
        for seg in self.schedule:
            if seg.start <= index and (seg.stop is None or index < seg.stop):
                return seg.shift
        return None

    def segments(self, n_frames: int) -> list[tuple[int, int, Shift | None]]:
        """Maximal runs (start, stop, condition) of one condition over frames 0..n_frames-1."""
        runs: list[tuple[int, int, Shift | None]] = []
        for i in range(n_frames):
            cond = self.condition_at(i)
            if runs and runs[-1][2] == cond:
                runs[-1] = (runs[-1][0], i + 1, cond)
            else:
                runs.append((i, i + 1, cond))
        return runs

    def __str__(self) -> str:
        if isinstance(self.schedule, Cycle):
            return PREFIX + str(self.schedule)
        return PREFIX + ",".join(str(s) for s in self.schedule)


def _check_cycle(cycle: Cycle) -> None:
    if not cycle.conditions:
        raise SpecError("a cycling stream needs at least one condition")
    if cycle.segment < 1:
        raise SpecError(f"stream segment length must be >= 1 frame, got {cycle.segment}")


def _check_segments(segments: tuple[Segment, ...]) -> tuple[Segment, ...]:
    """Sort by start; reject empty, negative, inverted or overlapping ranges."""
    if not segments:
        raise SpecError("an explicit stream needs at least one COND@A-B segment")
    ordered = tuple(sorted(segments, key=lambda s: s.start))
    for seg in ordered:
        if seg.start < 0 or (seg.stop is not None and seg.stop <= seg.start):
            raise SpecError(f"stream segment {seg} has an empty or negative frame range")
    for before, after in zip(ordered, ordered[1:], strict=False):
        if before.stop is None or before.stop > after.start:
            raise SpecError(f"stream segments {before} and {after} overlap")
    return ordered


def _parse_int(text: str, what: str, spec: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise SpecError(f"{what} {text.strip()!r} in stream {spec!r} is not a whole number") from None


def _parse_cycle(body: str, spec: str, segment: int | None) -> Cycle:
    names, slash, length = body.partition("/")
    hold = _parse_int(length, "segment length", spec) if slash else None
    if hold is not None and segment is not None and hold != segment:
        raise SpecError(f"stream {spec!r} says segment {hold} but segment={segment} was also given")
    if hold is None:
        hold = DEFAULT_SEGMENT if segment is None else segment
    names = names.strip()
    if names in STREAM_POOLS:
        return Cycle(tuple(parse_condition(c) for c in STREAM_POOLS[names]), hold, pool=names)
    if "," not in names and ":" not in names and names not in ("clean", "dusk", "night"):
        raise SpecError(f"unknown stream {names!r} in {spec!r}; pools: {', '.join(STREAM_POOLS)}, "
                        "or list conditions (stream:fog:3,dusk/50) or ranges (stream:fog:3@0-99,dusk@100-)")
    return Cycle(tuple(parse_condition(c) for c in names.split(",")), hold)


def _parse_segments(body: str, spec: str) -> tuple[Segment, ...]:
    segments = []
    for item in body.split(","):
        cond, at, frames = item.rpartition("@")
        if not at:
            raise SpecError(f"stream item {item.strip()!r} in {spec!r} has no frame range; write COND@A-B")
        first, dash, last = frames.partition("-")
        if not dash:
            raise SpecError(f"frame range {frames.strip()!r} in {spec!r} must be A-B (inclusive) or A-")
        start = _parse_int(first, "first frame", spec)
        stop = _parse_int(last, "last frame", spec) + 1 if last.strip() else None
        segments.append(Segment(start, stop, parse_condition(cond)))
    return tuple(segments)


class StreamDataset(FrameShiftDataset):
    """Wrap a frame sequence so frame i is under `stream.condition_at(i)`, seeded per (seed, i).

    `seed` seeds the per-frame noise; it defaults to the stream's seed (0 if that is None). A stream
    without a seed of its own is ordered by `seed` too.
    """

    def __init__(self, dataset: SegDataset, stream: ShiftStream, seed: int | None = None) -> None:
        seed = (stream.seed or 0) if seed is None else seed
        super().__init__(dataset, seed)
        self.stream = stream if stream.seed is not None else stream.with_seed(seed)

    def condition_at(self, index: int) -> Shift | None:
        return self.stream.condition_at(index)


class RepeatedSchedules:
    """Passes over one sequence played back to back: frame i is frame i mod n of pass i // n.

    Each pass is the same frames under its own seeded schedule (the caller opens pass j with seed
    `seed + j`, so a stream's order and every frame's noise differ between passes). All passes must
    hold n frames. `source_index(i)` = i mod n names the underlying labelled frame: a frame seen
    under K schedules is one sample of the scene, not K (eval/bootstrap.py resamples source frames).
    """

    def __init__(self, passes: Sequence[SegDataset], frames_per_pass: int | None = None) -> None:
        if not passes:
            raise SpecError("RepeatedSchedules needs at least one pass")
        sizes = {len(p) for p in passes}
        if len(sizes) != 1:
            raise SpecError(f"every pass must hold the same frames, got lengths {sorted(sizes)}")
        n = sizes.pop()
        self.passes = list(passes)
        self.per_pass = n if frames_per_pass is None else max(0, min(frames_per_pass, n))

    @property
    def classes(self) -> ClassTable:
        return self.passes[0].classes

    @property
    def split(self) -> str:
        return self.passes[0].split

    def __len__(self) -> int:
        return self.per_pass * len(self.passes)

    def _locate(self, index: int) -> tuple[SegDataset, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} out of range for {len(self)} frames")
        return self.passes[index // self.per_pass], index % self.per_pass

    def __getitem__(self, index: int) -> Sample:
        dataset, i = self._locate(index)
        return dataset[i]

    def condition_at(self, index: int) -> Shift | None:
        dataset, i = self._locate(index)
        at = getattr(dataset, "condition_at", None)
        return None if at is None else at(i)

    def source_index(self, index: int) -> int:
        return self._locate(index)[1]
