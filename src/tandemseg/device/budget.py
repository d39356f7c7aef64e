"""Budget controllers: turn a stream of scores into upload decisions at a target rate, online.

Causal: the decision for frame t uses the scores of frames < t and of frame t itself, never later ones.

* `WindowController` (default): threshold = the empirical (1 - r_eff) quantile of the last `window`
  scores (the current one included), where r_eff = r + deficit / horizon corrects the running count
  towards r * t, so the long-run rate meets the target even while the score distribution drifts.
  Nothing is uploaded during the first `warmup` frames (their scores only fill the window); the
  budget saved there is spent through the deficit term.
* `SAController`: the stochastic-approximation quantile tracker tau <- tau + eta * s_t * (1[score > tau] - r),
  with the step scaled by a running estimate s_t of the scores' spread (scores have arbitrary units).
* `ByteBudgetController`: a bytes-per-second budget at a frame rate: a token bucket (capacity
  `burst_s` seconds of budget; an upload needs a positive balance and its real size is then debited,
  so the balance may dip below zero by at most one payload) caps what is sent, and an inner window
  controller targets the rate the budget affords, r = (bytes_per_s / fps) / (running mean payload size),
  scaled by (0.5 + bucket fill) so budget that would overflow the bucket is spent rather than lost.
  The payload estimate is a fixed prior, `PRIOR_UPLOAD_BYTES`, until the first upload is measured, then
  the mean of the measured sizes, turning into an exponential average (weight `size_decay`) once there
  are 1 / size_decay of them: only sizes of uploads actually sent, never the stream's sizes known in
  advance, so the in-process evaluation and the HTTP device start from the same state
  (`make_controller` takes the spec alone).
* `FixedSelection`: uploads exactly a given set of frame ids (replays the offline oracle's choice).

Scores of -inf are never uploaded (a policy's veto, e.g. CEMA's band).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from tandemseg.errors import SpecError

# The bytes budget's first guess of an upload's size, before any upload has been measured: a prior fixed in
# advance, not fitted to any stream. Deliberately small (10 kB; a 360x480 frame is 300-500 kB as PNG, tens of
# kB as JPEG): the estimate moves only when an upload is measured (the first measurement replaces the prior), so
# a prior ABOVE the real sizes would make the budget look unaffordable and delay the first upload that corrects
# it, while one below them costs at most one oversized payload, which the token bucket then pays back (an
# upload needs a positive balance). A deployment that knows better passes BudgetSpec(params={"initial_bytes": ...}).
PRIOR_UPLOAD_BYTES = 10_000.0

@dataclass
class ControllerStats:
    frames: int = 0
    uploads: int = 0
    bytes_up: int = 0

    @property
    def achieved_rate(self) -> float:
        return self.uploads / self.frames if self.frames else 0.0


def check_rate(rate: float) -> float:
    if not (isinstance(rate, int | float) and 0.0 <= rate <= 1.0):
        raise SpecError(f"upload rate must be a fraction in [0, 1] (e.g. 0.1 for 10%), got {rate!r}")
    return float(rate)


class Controller:
    """Base: `decide(score, frame_id)` -> bool; `charge(nbytes)` after an upload with its real size."""

    def __init__(self) -> None:
        self.stats = ControllerStats()

    @property
    def target_rate(self) -> float:
        raise NotImplementedError

    def decide(self, score: float, frame_id: int = -1) -> bool:
        upload = self._decide(score, frame_id)
        self.stats.frames += 1
        self.stats.uploads += int(upload)
        return upload

    def _decide(self, score: float, frame_id: int) -> bool:
        raise NotImplementedError

    def charge(self, nbytes: int) -> None:
        self.stats.bytes_up += int(nbytes)

    def summary(self) -> dict:
        s = self.stats
        return {
            "target_rate": self.target_rate, "achieved_rate": s.achieved_rate, "rate_error": s.achieved_rate - self.target_rate,
            "frames": s.frames, "uploads": s.uploads, "bytes_up": s.bytes_up,
        }


class WindowController(Controller):
    """Sliding-window quantile threshold with deficit feedback (see module docstring)."""

    def __init__(self, rate: float, window: int = 50, horizon: float = 20.0, warmup: int = 10) -> None:
        super().__init__()
        self.rate = check_rate(rate)
        if window < 1 or not horizon > 0 or warmup < 0:
            raise SpecError(f"window must be >= 1, horizon > 0 and warmup >= 0, got {window}, {horizon}, {warmup}")
        self.window: deque[float] = deque(maxlen=window)
        self.horizon = horizon
        self.warmup = warmup

    @property
    def target_rate(self) -> float:
        return self.rate

    def effective_rate(self) -> float:
        """r + (uploads owed so far) / horizon, clipped to [0, 1]."""
        if math.isinf(self.horizon):
            return self.rate
        owed = self.rate * self.stats.frames - self.stats.uploads
        return min(1.0, max(0.0, self.rate + owed / self.horizon))

    def _decide(self, score: float, frame_id: int) -> bool:
        hist = np.fromiter(self.window, dtype=np.float64, count=len(self.window))
        self.window.append(score)
        if score == -math.inf or self.rate == 0.0:
            return False
        if self.rate == 1.0:
            return True
        if self.stats.frames < self.warmup:
            return False  # a rank among a handful of scores means little; the budget saved is spent later
        n = len(hist) + 1
        # Mid-rank of the score among the window and itself: on a stationary stream the share of frames
        # whose mid-rank falls below r * n is r, with ties shared rather than all admitted.
        position = float((hist > score).sum()) + 0.5 * (float((hist == score).sum()) + 1.0)
        return position < self.effective_rate() * n


class SAController(Controller):
    """Stochastic-approximation quantile tracking (Robbins-Monro) with a scale-normalised step."""

    def __init__(self, rate: float, eta: float = 0.5, spread_decay: float = 0.02) -> None:
        super().__init__()
        self.rate = check_rate(rate)
        self.eta, self.decay = eta, spread_decay
        self.tau: float | None = None
        self.center = 0.0
        self.spread = 0.0

    @property
    def target_rate(self) -> float:
        return self.rate

    def _decide(self, score: float, frame_id: int) -> bool:
        if not math.isfinite(score):
            upload = score == math.inf
        else:
            if self.tau is None:
                self.tau = self.center = score
            self.center += self.decay * (score - self.center)
            self.spread += self.decay * (abs(score - self.center) - self.spread)
            upload = score > self.tau
        upload = upload and self.rate > 0.0
        if self.tau is not None:
            step = self.eta * max(self.spread, 1e-12)
            self.tau += step * (float(upload) - self.rate)
        return upload


class ByteBudgetController(Controller):
    """Token bucket on real payload bytes at `fps` frames/s, with an inner rate controller (see module docstring)."""

    def __init__(
        self, bytes_per_s: float, fps: float, burst_s: float = 5.0, initial_bytes: float = PRIOR_UPLOAD_BYTES,
        window: int = 50, size_decay: float = 0.2,
    ) -> None:
        super().__init__()
        if not (bytes_per_s > 0 and fps > 0 and burst_s > 0 and initial_bytes > 0):
            raise SpecError(f"bytes budget needs bytes_per_s, fps, burst_s, initial_bytes > 0; got {bytes_per_s}, {fps}, {burst_s}, {initial_bytes}")
        self.per_frame = bytes_per_s / fps
        self.capacity = bytes_per_s * burst_s
        self.tokens = self.capacity
        self.expected_bytes = float(initial_bytes)
        self.size_decay = size_decay
        self.measured = 0  # uploads whose real size has been charged
        self.inner = WindowController(self.affordable_rate(), window, horizon=math.inf)

    def affordable_rate(self) -> float:
        return min(1.0, self.per_frame / self.expected_bytes)

    @property
    def target_rate(self) -> float:
        return self.affordable_rate()

    def _decide(self, score: float, frame_id: int) -> bool:
        self.tokens = min(self.capacity, self.tokens + self.per_frame)
        # Feedback on the bucket level, not on a frame count: a fuller bucket means budget about to be
        # lost at the cap, so ask for more frames; an emptier one, fewer. Half full is the set point.
        fill = min(1.0, max(0.0, self.tokens / self.capacity))
        self.inner.rate = min(1.0, self.affordable_rate() * (0.5 + fill))
        want = self.inner.decide(score, frame_id)
        return want and self.tokens > 0

    def charge(self, nbytes: int) -> None:
        super().charge(nbytes)
        self.tokens -= nbytes
        # running mean of the measured sizes (the prior drops out at the first), an exponential average later
        self.measured += 1
        self.expected_bytes += max(1.0 / self.measured, self.size_decay) * (nbytes - self.expected_bytes)

    def summary(self) -> dict:
        return {**super().summary(), "bytes_per_frame_budget": self.per_frame, "expected_bytes": self.expected_bytes}


class FixedSelection(Controller):
    """Uploads exactly the frames in `frame_ids` (an offline choice, e.g. the oracle's)."""

    def __init__(self, frame_ids: Iterable[int], total_frames: int | None = None) -> None:
        super().__init__()
        self.frame_ids = frozenset(int(i) for i in frame_ids)
        self.total_frames = total_frames

    @property
    def target_rate(self) -> float:
        return len(self.frame_ids) / self.total_frames if self.total_frames else float("nan")

    def _decide(self, score: float, frame_id: int) -> bool:
        return frame_id in self.frame_ids


class EligibleFrames(Controller):
    """Uploads every frame its policy did not rule out (score > -inf): CEMA's sample filter decides alone."""

    @property
    def target_rate(self) -> float:
        return float("nan")

    def _decide(self, score: float, frame_id: int) -> bool:
        return score > float("-inf")


@dataclass
class BudgetSpec:
    """What the CLI asks for: a target rate, or a bytes/s budget at a frame rate."""

    rate: float | None = 0.1
    mode: str = "window"  # window | sa
    bytes_per_s: float | None = None
    fps: float = 10.0
    params: dict = field(default_factory=dict)


CONTROLLERS = {"window": WindowController, "sa": SAController}


def make_controller(spec: BudgetSpec) -> Controller:
    """A fresh controller for one stream, from the spec alone (the same in every path: nothing about the
    stream is known before its frames arrive; a bytes budget starts from PRIOR_UPLOAD_BYTES)."""
    if spec.bytes_per_s is not None:
        return ByteBudgetController(spec.bytes_per_s, spec.fps, **spec.params)
    if spec.mode not in CONTROLLERS:
        raise SpecError(f"unknown controller {spec.mode!r}; valid: {', '.join(CONTROLLERS)}")
    if spec.rate is None:
        raise SpecError("give an upload rate (--rate) or a bytes budget (--bytes-per-s)")
    return CONTROLLERS[spec.mode](spec.rate, **spec.params)
