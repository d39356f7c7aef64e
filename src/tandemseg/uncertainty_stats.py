"""What fitting U on the device side and DCAM on the cloud side share (ACDC appendix A.4.1, eq. 5 and 19).

Both turn one frame's class probabilities and a label map into the eq. 5 sums, then into the
closed-form U of eq. 19: U fitting (device/uncertainty.py) over thousands of labelled frames, DCAM
(cloud/dcam.py) over one uploaded frame with the cloud's prediction as the label. One implementation
keeps U_new the same kind of object as the fitted U; the parts only some features need (entropy-
weighted sums, pixel second moments) are options that DCAM leaves off unless its U was fitted on them.

The readings of the garbled equations are argued in device/uncertainty.py and docs/methods/offloading.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from tandemseg.errors import TandemsegError

STATS_READINGS = ("pixels", "set")
# What q(x) and the eq. 5 vectors are made of: the class probabilities p (the paper), or the
# entropy-weighted probabilities E * p (class mass weighted by each pixel's eq. 11 uncertainty).
# "pixel": eq. 9 applied per pixel and averaged (device/uncertainty.py says why).
FEATURES = ("probs", "entropy", "pixel")
MIN_SET_FRACTION = 0.01  # stats="set": a frame's negative (positive) vector needs >= 1% of its pixels in the set
OUTER_CHUNK = 8192  # pixels per block of the p p^T sums (see _masked_outer_sums)


class UncertaintyError(TandemsegError):
    """An uncertainty-matrix file or its statistics are missing, corrupt, or do not fit the model's classes."""


def pixel_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Eq. 11: E = -sum_k p_k log p_k over dim 1, (N, C, H, W) -> (N, H, W), in nats."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(1)


def channel_argmax(probs: np.ndarray) -> np.ndarray:
    """argmax over the class axis of (C, H, W), first maximum on ties (as np.argmax), in C contiguous passes
    (6.7 ms at 11 x 360 x 480 on one core; torch's argmax(0) over the strided axis takes 24 ms)."""
    best = probs[0].copy()
    index = np.zeros(best.shape, dtype=np.int64)
    for c in range(1, probs.shape[0]):
        better = probs[c] > best
        index[better] = c
        np.maximum(best, probs[c], out=best)
    return index


# ----------------------------------------------------------------------------- eq. 5 statistics of one frame


@dataclass
class FrameStats:
    """One frame's eq. 5 sums: s_pos/s_neg (C,) = summed probabilities over correct/wrong valid pixels;
    the `_e` fields are the same sums of entropy-weighted probabilities E * p (feature "entropy"), the
    `pp` fields the sums of p p^T (feature "pixel"). Optional fields are None when not computed."""

    q: np.ndarray  # (C,) q(x): mean probabilities over all pixels (what the score sees)
    s_pos: np.ndarray  # (C,)
    s_neg: np.ndarray  # (C,)
    n_pos: int
    n_neg: int
    q_e: np.ndarray | None = None  # (C,) mean of E * p over the coarse map
    s_pos_e: np.ndarray | None = None  # (C,)
    s_neg_e: np.ndarray | None = None  # (C,)
    pp: np.ndarray | None = None  # (C, C) S(x) = mean over the coarse map of p p^T (feature "pixel")
    pp_pos: np.ndarray | None = None  # (C, C) sum of p p^T over correct valid pixels
    pp_neg: np.ndarray | None = None  # (C, C) sum of p p^T over wrong valid pixels

    @property
    def n_valid(self) -> int:
        return self.n_pos + self.n_neg

    @property
    def error_rate(self) -> float:
        return self.n_neg / max(self.n_valid, 1)

    def vectors(self, stats: str, feature: str = "probs") -> tuple[np.ndarray | None, np.ndarray | None]:
        """(q+, q-) under the chosen reading of eq. 5; None where the set is (nearly) empty."""
        s_pos, s_neg = self.sums(feature)
        if stats == "pixels":
            n = max(self.n_valid, 1)
            return (s_pos / n if self.n_pos else None), (s_neg / n if self.n_neg else None)
        if stats == "set":
            least = max(1, math.ceil(MIN_SET_FRACTION * self.n_valid))
            qp = s_pos / self.n_pos if self.n_pos >= least else None
            qn = s_neg / self.n_neg if self.n_neg >= least else None
            return qp, qn
        raise ValueError(f"unknown stats reading {stats!r}; valid: {', '.join(STATS_READINGS)}")

    def sums(self, feature: str) -> tuple[np.ndarray, np.ndarray]:
        if feature == "probs":
            return self.s_pos, self.s_neg
        if feature == "entropy":
            if self.s_pos_e is None or self.s_neg_e is None:
                raise UncertaintyError("these statistics carry no entropy-weighted sums; recompute them (fit-uncertainty without a stale --cache-dir)")
            return self.s_pos_e, self.s_neg_e
        raise ValueError(f"unknown feature {feature!r}; valid: {', '.join(FEATURES)}")

    def pixel_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """(sum of p p^T over correct pixels, over wrong pixels), each (C, C): what feature "pixel" fits on."""
        if self.pp_pos is None or self.pp_neg is None:
            raise UncertaintyError("these statistics carry no pixel second moments; recompute them (fit-uncertainty without a stale --cache-dir)")
        return self.pp_pos, self.pp_neg

    def score_vector(self, feature: str) -> np.ndarray:
        """The q(x) the runtime scores with this feature: (C,), or S(x) (C, C) for feature "pixel"."""
        if feature == "pixel":
            if self.pp is None:
                raise UncertaintyError("these statistics carry no pixel second moments; recompute them (fit-uncertainty without a stale --cache-dir)")
            return self.pp
        return self.q if feature == "probs" else self.q_e

    @property
    def mean_entropy(self) -> float | None:
        """Mean pixel entropy of the coarse map (sum over classes of q_E), the `entropy` policy's score."""
        return None if self.q_e is None else float(self.q_e.sum())


def frame_stats(
    probs: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray, ignore_index: int, *, pred: np.ndarray | None = None,
    entropy: bool = True, pixel_moments: bool = True, dtype: torch.dtype = torch.float64,
) -> FrameStats:
    """Eq. 5 sums of one frame from its probabilities (C, H, W) at the label's resolution and its label (H, W).

    A pixel is correct when the argmax of `probs` equals the label (`pred`: that argmax, when the caller
    has it already). `entropy` / `pixel_moments` add the sums features "entropy" / "pixel" need.
    The sums run in `dtype`: float64 by default (U fitting pools them over thousands of frames); DCAM asks
    for float32 (it runs on every upload: 5 against 11 ms at 11 x 360 x 480 on one busy core).
    """
    flat = _tensor(probs).to(dtype)
    c = flat.shape[0]
    flat = flat.reshape(c, -1)  # (C, HW)
    lab = _tensor(label).reshape(-1)
    valid = (lab != ignore_index) & (lab >= 0) & (lab < c)
    argmax = flat.argmax(0) if pred is None else _tensor(pred).reshape(-1)
    correct = (argmax == lab) & valid
    wrong = valid & ~correct
    columns = [torch.ones_like(flat[0]), correct.to(flat.dtype), wrong.to(flat.dtype)]
    if entropy:
        ent = pixel_entropy(flat[None])[0]  # (HW,)
        columns += [ent, ent * columns[1], ent * columns[2]]
    # Masked sums as one matrix product: no (C, HW) temporaries per mask (they fragment the heap), and it
    # runs on torch's thread pool (numpy's BLAS would start its own threads next to torch's on a busy server).
    sums = (flat @ torch.stack(columns, 1)).double().T.numpy().copy()  # (3 or 6, C)
    n = flat.shape[1]
    st = FrameStats(q=sums[0] / n, s_pos=sums[1], s_neg=sums[2], n_pos=int(correct.sum()), n_neg=int(wrong.sum()))
    if entropy:
        st.q_e, st.s_pos_e, st.s_neg_e = sums[3] / n, sums[4], sums[5]
    if pixel_moments:
        pp_all, st.pp_pos, st.pp_neg = _masked_outer_sums(flat, columns[1], columns[2])
        st.pp = pp_all / n
    return st


def _tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A tensor view of an array (a copy only when its strides are negative, e.g. a flipped frame)."""
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))


def _masked_outer_sums(flat: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, chunk: int = OUTER_CHUNK) -> tuple[np.ndarray, ...]:
    """(sum_i p_i p_i^T, the same over pos-weighted pixels, over neg-weighted pixels), each (C, C) float64, from flat (C, N).

    In fixed-size chunks: whole-frame (C, N) temporaries of varying size fragment the heap (a fit over
    thousands of frames then grows by tens of MB per frame); chunk-sized ones are reused.
    """
    c = flat.shape[0]
    sums = torch.zeros(3, c, c, dtype=flat.dtype)
    for a in range(0, flat.shape[1], chunk):
        f = flat[:, a : a + chunk]  # (C, n) view
        sums[0] += f @ f.T
        sums[1] += (f * pos[a : a + chunk]) @ f.T
        sums[2] += (f * neg[a : a + chunk]) @ f.T
    return tuple(sums.double().numpy())


# ----------------------------------------------------------------------------- moments and the closed form (eq. 6-7, 18-19)


def second_moment(qs: np.ndarray) -> np.ndarray:
    """E[q q^T] over rows of (N, C) -> (C, C)."""
    qs = np.atleast_2d(np.asarray(qs, dtype=np.float64))
    if len(qs) == 0:
        raise ValueError("no vectors to average: the fit data has no correct (or no wrong) pixels")
    return qs.T @ qs / len(qs)


def frame_moments(stats: FrameStats, reading: str = "pixels", feature: str = "probs") -> tuple[np.ndarray, np.ndarray]:
    """(M+, M-) of ONE frame under the eq. 5 reading and feature; an empty set gives a zero moment.

    What DCAM's U_new is fitted on (one pseudo-labelled frame); U fitting pools many frames instead
    (device/uncertainty.py `moments`). Feature "pixel": the frame's mean p p^T over correct / wrong pixels.
    """
    c = len(stats.q)
    zero = np.zeros((c, c))
    if feature == "pixel":
        pos, neg = stats.pixel_sums()
        return (pos / stats.n_pos if stats.n_pos else zero), (neg / stats.n_neg if stats.n_neg else zero)
    q_pos, q_neg = stats.vectors(reading, feature)
    return (zero if q_pos is None else np.outer(q_pos, q_pos)), (zero if q_neg is None else np.outer(q_neg, q_neg))


def check_lam_gamma(lam: float, gamma: float) -> None:
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1] (eq. 6), got {lam}")
    if not gamma > 0.0:
        raise ValueError(f"gamma must be > 0 (eq. 6), got {gamma}")


def closed_form_from_moments(m_pos: np.ndarray, m_neg: np.ndarray, lam: float = 0.5, gamma: float = 1.0) -> np.ndarray:
    """Eq. 19 (sign from eq. 18): U = (lam M- - (1 - lam) M+) / (2 gamma)."""
    check_lam_gamma(lam, gamma)
    return (lam * np.asarray(m_neg, np.float64) - (1.0 - lam) * np.asarray(m_pos, np.float64)) / (2.0 * gamma)


def rescale_like(u: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """U scaled to the Frobenius norm of `reference`. Ranking by eq. 9 is invariant to U's positive scale; a
    common scale keeps DCAM's blend of U with a closed-form U_new (eq. 14) mixing like with like."""
    n = np.linalg.norm(u)
    return u if n == 0 else u * (np.linalg.norm(reference) / n)
