"""Upload policies: one interface, a score per frame (higher = more worth sending to the cloud).

A policy turns the device's coarse probabilities into a score; the budget controller (budget.py) turns
scores into upload decisions at a target rate. `all`/`none` bypass the controller (`fixed`), `oracle`
knows each frame's cloud gain in advance and is therefore not causal (evaluation only).

    acdc        u(x) = q U q^T, ACDC eq. 9 (sample-level uncertainty from the learned matrix U)
    acdc_ent    u(x) standardised + mean-entropy standardised: ACDC's score with a pixel-entropy cue
    entropy     mean pixel entropy of the coarse prediction (eq. 11 averaged over pixels)
    cema        CEMA's entropy band: inside (E_min, E_max^t) score = entropy, outside = -inf (never sent)
    confidence  MESS eq. 7-9: 1 - (fraction of pixels whose edge-smoothed top-1 probability >= th)
    random      a seeded uniform draw
    all / none  always / never upload
    oracle      the frame's known gain in mIoU from the cloud's prediction (offline reference; collab replays the greedy oracle's choice)

Policies are fresh objects per stream (cema keeps running statistics); the registry is a plain dict.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from tandemseg.device.uncertainty import UncertaintyMatrix, mean_probs, pixel_entropy, pixel_second_moment
from tandemseg.errors import SpecError
from tandemseg.exits.confidence import (  # MESS eq. 7-9, one implementation for exits and uploads
    image_confidence,
)


@dataclass
class FrameObservation:
    """What a policy may look at: the device's coarse probabilities (C, h, w) for frame `frame_id`."""

    frame_id: int
    probs: torch.Tensor  # (C, h, w), sums to 1 over C

    @cached_property
    def q(self) -> np.ndarray:
        """q(x) of eq. 9: pixel-averaged class probabilities (C,)."""
        return mean_probs(self.probs[None])[0].double().numpy()

    @cached_property
    def entropy(self) -> torch.Tensor:
        """Eq. 11 on the coarse map (h, w)."""
        return pixel_entropy(self.probs[None])[0]

    @cached_property
    def mean_entropy(self) -> float:
        """Eq. 11 averaged over pixels of the coarse map (the upsampled map has the same mean up to borders)."""
        return float(self.entropy.mean())

    @cached_property
    def q_entropy(self) -> np.ndarray:
        """q_E(x): pixel average of E * p (C,), the score vector of a U fitted with feature 'entropy'."""
        return (self.probs * self.entropy[None]).flatten(1).mean(1).double().numpy()

    @cached_property
    def pixel_moment(self) -> np.ndarray:
        """S(x) = mean_i p_i p_i^T (C, C), the input of a U fitted with feature 'pixel'."""
        return pixel_second_moment(self.probs)

    def score_vector(self, feature: str) -> np.ndarray:
        if feature == "pixel":
            return self.pixel_moment
        return self.q if feature == "probs" else self.q_entropy


class Policy:
    """Base: `score(obs)` -> float; `fixed` is True/False for policies that ignore the controller."""

    name = "base"
    fixed: bool | None = None
    causal = True

    def score(self, obs: FrameObservation) -> float:
        raise NotImplementedError


class AcdcPolicy(Policy):
    """ACDC eq. 9: u(x) = q(x) U q(x)^T. Holds the UncertaintyMatrix object, so DCAM updates apply at once."""

    name = "acdc"

    def __init__(self, uncertainty: UncertaintyMatrix) -> None:
        self.uncertainty = uncertainty

    def score(self, obs: FrameObservation) -> float:
        return float(self.uncertainty.score(obs.score_vector(self.uncertainty.feature)))


class AcdcEntropyPolicy(Policy):
    """ACDC's score combined with the pixel-entropy cue (sec. 3.2.1's second source of uncertainty).

    Each cue is standardised online by its running mean and std over the frames seen so far (causal),
    and the score is z(u) + weight * z(E). weight = 1 weighs the two cues equally.
    """

    name = "acdc_ent"

    def __init__(self, uncertainty: UncertaintyMatrix, weight: float = 1.0) -> None:
        self.uncertainty, self.weight = uncertainty, weight
        self._u, self._e = RunningMoments(), RunningMoments()

    def score(self, obs: FrameObservation) -> float:
        u = float(self.uncertainty.score(obs.score_vector(self.uncertainty.feature)))
        e = obs.mean_entropy
        self._u.add(u)
        self._e.add(e)
        return self._u.z(u) + self.weight * self._e.z(e)


@dataclass
class RunningMoments:
    """Welford's running mean/variance; z() standardises with what has been seen (0 before two values)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)

    def z(self, x: float) -> float:
        if self.n < 2:
            return 0.0
        std = math.sqrt(self.m2 / (self.n - 1))
        return (x - self.mean) / std if std > 0 else 0.0


class EntropyPolicy(Policy):
    """Mean pixel entropy (eq. 11 averaged over the frame): the classic uncertainty baseline of ACDC Table 2."""

    name = "entropy"

    def score(self, obs: FrameObservation) -> float:
        return obs.mean_entropy


@dataclass
class CemaPolicy(Policy):
    """CEMA's dynamic entropy band (paper 002, 'Dynamic entropy-based sample filtration').

    A frame is eligible when E_min < E(x) < E_max^t; eligible frames score their entropy, the rest -inf.
    E_max^t follows the reference code (chenyaofo/CEMA, EntropyCriterion): after a warm-up of `warmup`
    frames, E_max^t = coeff * E_max^0 * (running mean entropy / mean entropy at the end of warm-up),
    recomputed once per batch of `batch` frames. Thresholds are fractions of ln C as in CEMA.

    With `quantiles` = (q_lo, q_hi) the band instead follows the stream: E_min^t and E_max^t are those quantiles
    of the last `window` frames' entropies (nothing is eligible during warm-up). The reading chosen for
    segmentation: CEMA's fractions of ln C are set for 1000-class classification, while a segmenter's mean pixel
    entropy sits in a narrow band (0.14-0.28 ln C for the CamVid device) whose level differs between scenes
    (train vs val streams: medians 0.53 vs 0.41 nats), so no fixed pair transfers; a running band keeps CEMA's
    two exclusions (the most certain, low-informative frames and the least certain, unreliable ones) and its
    dynamic upper threshold.
    """

    high_margin: float = 0.4  # E_max^0 = high_margin * ln C (CEMA's ent_high_margin)
    low_margin: float = 0.02  # E_min = low_margin * ln C: 'low-informative' frames below it are never sent
    coeff: float = 1.0  # lambda of the E_max update (CEMA's ent_high_margin_coeff)
    warmup: int = 16
    batch: int = 8
    quantiles: tuple[float, float] | None = None  # running band: (q_lo, q_hi) of the recent entropies
    window: int = 64  # frames the running band looks back over
    name: str = "cema"
    _sum: float = field(default=0.0, repr=False)
    _n: int = field(default=0, repr=False)
    _warm_mean: float | None = field(default=None, repr=False)
    _e_max_scale: float = field(default=1.0, repr=False)
    _recent: deque = field(default_factory=deque, repr=False)

    def __post_init__(self) -> None:
        if self.quantiles is not None:
            lo, hi = self.quantiles
            if not 0.0 <= lo < hi <= 1.0:
                raise SpecError(f"cema quantiles must satisfy 0 <= low < high <= 1, got {self.quantiles}")
        if self.window < 2:
            raise SpecError(f"cema window must be >= 2, got {self.window}")

    def thresholds(self, num_classes: int) -> tuple[float, float]:
        """(E_min, E_max^t) in nats for the current frame."""
        if self.quantiles is not None:
            if len(self._recent) < self.warmup:
                return math.inf, -math.inf  # an empty band until the stream has shown its level
            lo, hi = np.quantile(np.fromiter(self._recent, float), self.quantiles)
            return float(lo), float(hi)
        ln_c = math.log(num_classes)
        return self.low_margin * ln_c, self.high_margin * ln_c * self._e_max_scale

    def score(self, obs: FrameObservation) -> float:
        e = obs.mean_entropy
        e_min, e_max = self.thresholds(obs.probs.shape[0])
        self._observe(e)
        return e if e_min < e < e_max else -math.inf

    def _observe(self, e: float) -> None:
        """Running mean of entropy; E_max rescales at batch boundaries once warm-up is over. The recent window
        is bounded (`window` frames)."""
        self._recent.append(e)
        while len(self._recent) > self.window:
            self._recent.popleft()
        self._sum += e
        self._n += 1
        if self._warm_mean is None and self._n >= self.warmup:
            self._warm_mean = self._sum / self._n
        if self._warm_mean and self._n % self.batch == 0:
            self._e_max_scale = self.coeff * (self._sum / self._n) / self._warm_mean


@dataclass
class ConfidencePolicy(Policy):
    """MESS image-level confidence (paper 003, eq. 7-9), inverted into an upload score.

    c_img = fraction of pixels whose top-1 probability >= `pixel_threshold` (eq. 7). With `edge_smoothing`,
    pixels on the semantic edges of the predicted map (eq. 8) take the median confidence of their
    (4 os + 1)^2 window (eq. 9). Score = 1 - c_img. Computed on the coarse map, so os = 1 there.
    """

    pixel_threshold: float = 0.8
    edge_smoothing: bool = True
    stride: int = 1  # os of eq. 8-9 in coarse-map pixels
    name: str = "confidence"

    def score(self, obs: FrameObservation) -> float:
        return 1.0 - image_confidence(obs.probs, self.pixel_threshold, self.edge_smoothing, self.stride)


class RandomPolicy(Policy):
    """A seeded uniform score: the controller then uploads a random subset at the target rate."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def score(self, obs: FrameObservation) -> float:
        return float(self.rng.random())


class AllPolicy(Policy):
    name, fixed = "all", True

    def score(self, obs: FrameObservation) -> float:
        return math.inf


class NonePolicy(Policy):
    name, fixed = "none", False

    def score(self, obs: FrameObservation) -> float:
        return -math.inf


class OraclePolicy(Policy):
    """Scores each frame by its known gain (labels + the cloud's output); offline, not causal."""

    name = "oracle"
    causal = False

    def __init__(self, gains: dict[int, float]) -> None:
        self.gains = gains

    def score(self, obs: FrameObservation) -> float:
        if obs.frame_id not in self.gains:
            raise KeyError(f"the oracle has no gain for frame {obs.frame_id}; it only scores frames of its evaluation stream")
        return float(self.gains[obs.frame_id])


def _needs_u(cls: type) -> Callable[..., Policy]:
    def make(uncertainty: UncertaintyMatrix | None = None, **params) -> Policy:
        if uncertainty is None:
            raise SpecError(f"policy {cls.name!r} needs an uncertainty matrix: pass --uncertainty U.safetensors (from `tandemseg fit-uncertainty`)")
        return cls(uncertainty, **params)

    return make


def _plain(cls: type) -> Callable[..., Policy]:
    def make(uncertainty: UncertaintyMatrix | None = None, **params) -> Policy:
        return cls(**params)

    return make


def _oracle(uncertainty: UncertaintyMatrix | None = None, gains: dict[int, float] | None = None) -> Policy:
    if gains is None:
        raise SpecError("policy 'oracle' needs per-frame gains (labels and the cloud's output); it exists in evaluation only")
    return OraclePolicy(gains)


POLICIES: dict[str, Callable[..., Policy]] = {
    "acdc": _needs_u(AcdcPolicy),
    "acdc_ent": _needs_u(AcdcEntropyPolicy),
    "entropy": _plain(EntropyPolicy),
    "cema": _plain(CemaPolicy),
    "confidence": _plain(ConfidencePolicy),
    "random": _plain(RandomPolicy),
    "all": _plain(AllPolicy),
    "none": _plain(NonePolicy),
    "oracle": _oracle,
}


def make_policy(name: str, uncertainty: UncertaintyMatrix | None = None, **params) -> Policy:
    """A fresh policy by name; unknown names raise SpecError listing the valid ones."""
    if name not in POLICIES:
        raise SpecError(f"unknown policy {name!r}; valid: {', '.join(POLICIES)}")
    try:
        return POLICIES[name](uncertainty, **params)
    except TypeError as e:
        raise SpecError(f"bad parameters {sorted(params)} for policy {name!r}: {e}") from None
