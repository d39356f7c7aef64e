"""Bootstrap confidence intervals for dataset-level mIoU over a stream, and the area under a rate curve.

mIoU here is computed from ONE confusion matrix summed over the stream's frames, so it is not a mean of
per-frame values and has no simple standard error. We resample instead (Efron's nonparametric bootstrap,
percentile interval): draw the stream's frames with replacement, sum the drawn frames' confusion
matrices, take the mIoU; B times; the (1 - level)/2 and (1 + level)/2 quantiles of the B values bound
the interval (95% by default).

* Unit of resampling: the source frame (`groups`). A frame shown under several shift schedules
  (`collab --repeat-schedules`) is drawn with all its copies at once, never as independent samples.
* Paired: one `Resamples` (one set of draws) serves every figure of an evaluation, so the difference
  between two policies is taken draw by draw and gets its own interval.
* Each run's upload decisions are held fixed: they are causal and depend on frame order, so the
  interval says how much a figure depends on which frames the stream happened to hold, given the
  decisions; it does not re-run policies on resampled streams.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
AUC_SPAN = (0.02, 0.30)  # target upload rates the area under the mIoU-vs-rate curve covers


def batched_miou(cms: np.ndarray) -> np.ndarray:
    """mIoU of each of K confusion matrices (K, C, C), classes absent from a matrix (no pixel in its row or
    column) left out, as ConfusionMatrix.miou does."""
    cms = np.asarray(cms)
    tp = np.diagonal(cms, axis1=1, axis2=2).astype(np.float64)  # (K, C)
    denom = cms.sum(1) + cms.sum(2) - tp  # (K, C)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)
    valid = np.isfinite(iou)
    return np.where(valid.any(1), np.nansum(iou, 1) / np.maximum(valid.sum(1), 1), np.nan)


def bootstrap_weights(groups: np.ndarray, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """(B, N) float64: how often frame i is drawn in resample b when the G distinct `groups` (source frames)
    are drawn G times with replacement, every frame of a drawn group coming along.

    Seeded (`np.random.default_rng(seed)`) and deterministic; with one group per frame this is the plain
    frame bootstrap. Weights rather than index lists: a resampled confusion matrix is then one matrix
    product, weights @ per-frame matrices.
    """
    groups = np.asarray(groups)
    if resamples < 1 or groups.ndim != 1 or groups.size == 0:
        raise ValueError(f"need resamples >= 1 and a non-empty 1-D group array, got {resamples}, shape {groups.shape}")
    ids, member = np.unique(groups, return_inverse=True)  # member[i]: which group frame i belongs to
    g = len(ids)
    draws = np.random.default_rng(seed).integers(0, g, (resamples, g))
    counts = np.bincount((draws + g * np.arange(resamples)[:, None]).ravel(), minlength=resamples * g).reshape(resamples, g)
    return counts[:, member].astype(np.float64)


def resampled_miou(frame_cms: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B,) dataset-level mIoU of each resample: sum_i weights[b, i] * frame_cms[i], then mIoU.

    float64 holds pixel counts exactly up to 2^53, far beyond any stream here.
    """
    n, c, _ = frame_cms.shape
    cms = weights @ frame_cms.reshape(n, c * c).astype(np.float64)  # (B, C*C)
    return batched_miou(cms.reshape(-1, c, c))


MIN_DEFINED = 0.99  # a ratio's interval needs it defined in at least this share of the resamples


def percentile_ci(samples: np.ndarray, level: float = DEFAULT_LEVEL, min_defined: float = MIN_DEFINED) -> list[float] | None:
    """[lo, hi]: the (1 - level)/2 and (1 + level)/2 quantiles of the bootstrap values (percentile interval).

    Undefined values (NaN: a gain ratio whose denominator vanished because the resample drew none of the
    oracle's frames) are left out while they are rare; with more than 1 - `min_defined` of them the
    interval is None rather than one that describes only the lucky resamples.
    """
    samples = np.asarray(samples, dtype=np.float64)
    finite = samples[np.isfinite(samples)]
    if samples.size == 0 or finite.size < min_defined * samples.size:
        return None
    lo, hi = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


@dataclass(frozen=True)
class Resamples:
    """One set of bootstrap draws over a stream, shared by every figure of one evaluation (paired)."""

    weights: np.ndarray  # (B, N)
    level: float = DEFAULT_LEVEL
    seed: int = 0

    @classmethod
    def draw(cls, groups: np.ndarray, resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = DEFAULT_LEVEL) -> Resamples:
        if not 0.0 < level < 1.0:
            raise ValueError(f"confidence level must be in (0, 1), got {level}")
        return cls(bootstrap_weights(groups, resamples, seed), level, seed)

    @property
    def count(self) -> int:
        return self.weights.shape[0]

    def miou(self, frame_cms: np.ndarray) -> np.ndarray:
        return resampled_miou(frame_cms, self.weights)

    def ci(self, samples: np.ndarray) -> list[float] | None:
        return percentile_ci(samples, self.level)

    def describe(self, groups: np.ndarray) -> dict:
        """What the JSON says about the intervals."""
        return {"resamples": self.count, "seed": self.seed, "level": self.level, "unit": "source frame",
                "source_frames": int(len(np.unique(groups))), "frames": int(len(groups)), "paired": True,
                "interval": "percentile", "decisions": "held fixed",
                "ratios": f"over the resamples where defined; null when under {MIN_DEFINED:.0%} are"}


def rate_auc(rates: Sequence[float], values: np.ndarray, span: tuple[float, float] = AUC_SPAN) -> np.ndarray | float | None:
    """Area under the curve value-vs-target-rate over the swept rates inside `span`, divided by the rates'
    extent (max - min of those rates): the curve's mean height over that extent, in the values' units.

    Trapezoid rule along axis 0 of `values` ((R,) or (R, B) for bootstrap samples, one row per rate).
    None with fewer than two distinct rates inside the span.
    """
    rates = np.asarray(rates, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    inside = (rates >= span[0] - 1e-9) & (rates <= span[1] + 1e-9)
    order = np.argsort(rates[inside], kind="stable")
    x = rates[inside][order]
    if len(np.unique(x)) < 2:
        return None
    y = values[inside][order]
    area = np.trapezoid(y, x=x, axis=0) / (x[-1] - x[0])
    return float(area) if np.ndim(area) == 0 else area
