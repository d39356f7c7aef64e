"""A stream through the real `DeviceRuntime`, frame by frame, keeping what a person needs to see what happened:
the frame, the device's map, the cloud's map, the final map, the label, and why the frame was (not) uploaded.

"Why" is the policy's score against the controller's threshold at that frame. The controllers decide by
rank within a window or by a running quantile rather than by a stored threshold, so the threshold is
measured: the lowest score the controller, in its state at that frame, would have uploaded
(`decision_threshold`, asked of copies so the run itself is untouched).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tandemseg.data.base import SegDataset
from tandemseg.device.budget import Controller
from tandemseg.device.runtime import DeviceRuntime

BISECTION_STEPS = 48  # halvings of the score interval: far below any score difference worth printing
WIDENINGS = 12  # doublings of the interval when the boundary lies beyond the scores seen so far


@dataclass
class FrameTrace:
    """One frame of a walked stream (maps are (H, W) uint8 class indices)."""

    index: int
    condition: str
    image: np.ndarray  # (H, W, 3) uint8: what the device saw
    label: np.ndarray  # ground truth
    device: np.ndarray  # the device's own map
    cloud: np.ndarray  # the cloud's map of this frame (whether or not it was uploaded)
    final: np.ndarray  # what the runtime returned
    uploaded: bool
    provenance: str  # 'cloud' | 'device' | 'fallback:<reason>'
    score: float
    threshold: float  # the controller's boundary at this frame; +inf: nothing would go, -inf: anything would, NaN: no controller


def decision_threshold(controller: Controller, frame_id: int, seen: Sequence[float]) -> float:
    """The lowest score `controller` would upload at `frame_id` in its current state, found by bisection on copies.

    Every controller here uploads a higher score whenever it uploads a lower one, so the decision has one
    boundary. `seen` (earlier scores) brackets it; the bracket widens while it does not.
    """
    def uploads(score: float) -> bool:
        return copy.deepcopy(controller).decide(score, frame_id)

    finite = [s for s in seen if math.isfinite(s)]
    lo, hi = (min(finite), max(finite)) if finite else (-1.0, 1.0)
    width = max(hi - lo, 1.0)
    lo, hi = lo - width, hi + width
    for _ in range(WIDENINGS):
        if uploads(hi) and not uploads(lo):
            break
        width *= 2.0
        lo, hi = lo - width, hi + width
    else:
        return -math.inf if uploads(lo) else math.inf
    for _ in range(BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if uploads(mid) else (mid, hi)
    return hi


def condition_at(dataset: SegDataset, index: int) -> str:
    """The shift condition of frame `index` ('clean' for datasets without one)."""
    at = getattr(dataset, "condition_at", None)
    condition = None if at is None else at(index)
    return "clean" if condition is None else str(condition)


def walk_stream(
    dataset: SegDataset, runtime: DeviceRuntime, cloud_maps: Sequence[np.ndarray], frames: int,
    on_frame: Callable[[], None] | None = None,
) -> list[FrameTrace]:
    """The first `frames` frames through `runtime`, one at a time (each waits for its reply), with their traces.

    `cloud_maps[i]` is the cloud's map of frame i (e.g. from a collab cache), shown for frames that stayed on
    the device too, so a reader can see what an upload would have bought.
    """
    traces, seen = [], []
    for i in range(min(frames, len(dataset))):
        sample = dataset[i]
        fixed = runtime.policy.fixed is not None  # all / none / oracle: no controller decides
        threshold = math.nan if fixed else decision_threshold(runtime.controller, i, seen)
        handle = runtime.process(sample.image, i)
        result = runtime.finish(handle)
        seen.append(handle.score)
        traces.append(FrameTrace(i, condition_at(dataset, i), sample.image, sample.label, handle.device.pred, np.asarray(cloud_maps[i]),
                                 result.label, handle.uploaded, result.provenance, float(handle.score), threshold))
        if on_frame:
            on_frame()
    return traces


def pick_frames(traces: Sequence[FrameTrace], per_condition: int = 2) -> list[FrameTrace]:
    """Up to `per_condition` frames of each condition in stream order of conditions: uploaded and kept frames
    alternately (the clearest upload first, then the nearest miss), so both kinds of decision show."""
    picked = []
    for condition in dict.fromkeys(t.condition for t in traces):
        group = [t for t in traces if t.condition == condition]
        sent = sorted((t for t in group if t.uploaded), key=lambda t: t.score - t.threshold, reverse=True)
        kept = sorted((t for t in group if not t.uploaded), key=lambda t: _miss_margin(t))
        order = [t for pair in _interleave(sent, kept) for t in pair]
        picked += sorted(order[:per_condition], key=lambda t: t.index)
    return picked


def _miss_margin(t: FrameTrace) -> float:
    """How far a kept frame's score fell below the threshold (infinite when nothing could have gone)."""
    gap = t.threshold - t.score
    return gap if math.isfinite(gap) else math.inf


def _interleave(a: list[FrameTrace], b: list[FrameTrace]) -> list[tuple[FrameTrace, ...]]:
    longest = max(len(a), len(b))
    return [tuple(x[i] for x in (a, b) if i < len(x)) for i in range(longest)]


def decision_text(t: FrameTrace) -> str:
    """One line saying where the final map came from and why."""
    if math.isnan(t.threshold):
        why = "the policy decides alone"
    elif math.isinf(t.threshold):
        why = f"u {t.score:.3g}; the controller sends nothing now" if t.threshold > 0 else f"u {t.score:.3g}; anything goes now"
    else:
        why = f"u {t.score:.3g} {'>' if t.uploaded else '<='} threshold {t.threshold:.3g}"
    what = "uploaded" if t.uploaded else "kept on device"
    source = "" if t.provenance in ("cloud", "device") else f" ({t.provenance})"
    return f"{what}{source}: {why}"
