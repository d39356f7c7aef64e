"""DCAM: the cloud's class-masked update of a device's uncertainty matrix U (ACDC sec. 3.2.2, eq. 13-14, Alg. 2).

For one uploaded frame the cloud's own prediction is the pseudo-label. The update splits in two steps:

1. `dcam_evidence` (stateless, per frame): the class mask m (eq. 13) and U_new, the closed-form U
   (appendix A.4.1, eq. 5 + 19) fitted to the frame's pseudo-labelled positive/negative statistics.
2. `dcam_blend` (needs the device's current U): eq. 14,
       U' = ((1 - alpha) U + alpha U_new) * M + U * (1 - M),
   with M = (m 1^T + 1 m^T) > 0, the C x C mask of every row and column of a flagged class.

The split matters for scale-out: step 1 runs on whichever replica segmented the frame; step 2 is a
cheap C x C blend applied atomically where the per-device state lives (cloud/states.py, one store for
the FastAPI service and the Ray deployment). `Dcam` bundles both steps with their settings.

U_new is fitted with the settings of the device's own U (`DcamSettings.from_meta(U.meta)`: eq. 5
reading, lambda, gamma and feature) from the eq. 5 statistics that U fitting uses too (uncertainty_stats).

Reading of eq. 13 (docs/methods/dcam.md has the argument): M_c = 1(y_pseudo != y_device) is a
*class-level* indicator. Class c is flagged when, among the pixels that the pseudo-label or the device
labels c, the fraction where the two disagree exceeds `min_disagreement` (default 0: any pixel, the
literal reading). That fraction is exactly 1 - IoU_c(device, pseudo-label). Classes absent from both
maps carry no evidence and are never flagged. Masking the C x C matrix: the score u = q U q^T =
sum_ij q_i q_j U_ij (eq. 9) reaches class c only through row c and column c (d u / d U_ij = q_i q_j), so
"the parameters related to a misclassified class" are its row and column; the rest stays untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from tandemseg.models.blocks import resize
from tandemseg.uncertainty_stats import (
    FEATURES,
    STATS_READINGS,
    FrameStats,
    channel_argmax,
    check_lam_gamma,
    closed_form_from_moments,
    frame_moments,
    frame_stats,
    rescale_like,
)

MASK_MODES = ("rows_cols", "outer")  # rows_cols: (m 1^T + 1 m^T) > 0 (default); outer: m m^T (ablation)


@dataclass(frozen=True)
class DcamEvidence:
    """What one pseudo-labelled frame says about the device (independent of the device's current U)."""

    class_mask: np.ndarray  # (C,) bool: m of eq. 13
    u_new: np.ndarray  # (C, C) float64: closed-form U from this frame's statistics
    disagreement: np.ndarray  # (C,) float64: 1 - IoU_c(device, pseudo); NaN for absent classes

    @property
    def any_flagged(self) -> bool:
        return bool(self.class_mask.any())


def class_disagreement(device_pred: np.ndarray, pseudo: np.ndarray, num_classes: int, valid: np.ndarray) -> np.ndarray:
    """Per class c: the share of the union {y_dev = c} | {y_pseudo = c} where the two disagree = 1 - IoU_c (NaN if absent).

    One bincount of the (pseudo, device) pairs gives the C x C confusion matrix: intersection = its diagonal,
    union = row sum + column sum - diagonal.
    """
    pairs = pseudo[valid] * num_classes + device_pred[valid]
    cm = np.bincount(pairs, minlength=num_classes * num_classes)[: num_classes * num_classes].reshape(num_classes, num_classes)
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, 1.0 - inter / np.maximum(union, 1.0), np.nan)


def class_mask(disagreement: np.ndarray, min_disagreement: float = 0.0) -> np.ndarray:
    """Eq. 13 at class level: flag c when its disagreement fraction exceeds `min_disagreement` (absent -> 0)."""
    return np.nan_to_num(disagreement, nan=-1.0) > min_disagreement


def matrix_mask(m: np.ndarray, mode: str = "rows_cols") -> np.ndarray:
    """The C x C mask M of eq. 14 from the class indicator m: rows and columns of flagged classes (or m m^T)."""
    if mode not in MASK_MODES:
        raise ValueError(f"unknown DCAM mask mode {mode!r}; valid: {', '.join(MASK_MODES)}")
    m = m.astype(bool)
    return (m[:, None] | m[None, :]) if mode == "rows_cols" else (m[:, None] & m[None, :])


def closed_form_u_new(stats: FrameStats, settings: DcamSettings) -> np.ndarray:
    """U_new of Alg. 2 line 4: eq. 19 (sign of eq. 18) from this frame's eq. 5 moments.

    The same reading, feature and closed form the device's U was fitted with (uncertainty_stats), so
    U_new and the fitted U are the same kind of object. An empty positive (negative) set contributes zero.
    """
    m_pos, m_neg = frame_moments(stats, settings.stats, settings.feature)
    return closed_form_from_moments(m_pos, m_neg, settings.lam, settings.gamma)


def check_inputs(u: np.ndarray, device_probs: np.ndarray, pseudo_label: np.ndarray, alpha: float) -> None:
    """Reject shapes and values that would silently corrupt U (every boundary checks its input)."""
    if u.ndim != 2 or u.shape[0] != u.shape[1]:
        raise ValueError(f"U must be a square C x C matrix, got shape {u.shape}")
    if device_probs.ndim != 3 or device_probs.shape[0] != u.shape[0]:
        raise ValueError(f"device_probs must be (C, h, w) with C = {u.shape[0]}, got shape {device_probs.shape}")
    if pseudo_label.ndim != 2:
        raise ValueError(f"pseudo_label must be an (H, W) label map, got shape {pseudo_label.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1] (eq. 14), got {alpha}")
    if not (np.isfinite(u).all() and np.isfinite(device_probs).all()):
        raise ValueError("U and device_probs must be finite (no NaN/inf)")


@dataclass(frozen=True)
class DcamSettings:
    """How U_new is fitted (must match how the device's U was fitted: UncertaintyMatrix.meta) and how eq. 13-14 read."""

    stats: str = "pixels"  # eq. 5 reading (uncertainty_stats.STATS_READINGS)
    lam: float = 0.5  # eq. 6 lambda
    gamma: float = 1.0  # eq. 6 gamma
    feature: str = "probs"  # what the fitted U scores (uncertainty_stats.FEATURES); U_new is built on the same
    min_disagreement: float = 0.0  # eq. 13: flag class c when 1 - IoU_c(device, pseudo) > this (0 = any pixel)
    mode: str = "rows_cols"  # eq. 14 mask: rows and columns of flagged classes | outer (m m^T)
    rescale: bool = True  # scale U_new to ||U||_F before blending (ranking by eq. 9 is scale-free; like with like)

    def __post_init__(self) -> None:
        # a server refuses bad settings when it starts, not on the first upload
        if self.stats not in STATS_READINGS:
            raise ValueError(f"unknown eq. 5 reading {self.stats!r}; valid: {', '.join(STATS_READINGS)}")
        if self.feature not in FEATURES:
            raise ValueError(f"unknown U feature {self.feature!r}; valid: {', '.join(FEATURES)}")
        if self.mode not in MASK_MODES:
            raise ValueError(f"unknown DCAM mask mode {self.mode!r}; valid: {', '.join(MASK_MODES)}")
        check_lam_gamma(self.lam, self.gamma)

    @classmethod
    def from_meta(cls, meta: dict, **overrides) -> DcamSettings:
        """Settings that follow a fitted U's metadata (UncertaintyMatrix.meta keys stats / lambda / gamma / feature).

        The kernel term of eq. 7-8 (meta "kernel") has no counterpart: U_new is the closed form (Alg. 2 line 4).
        """
        names = (("stats", "stats"), ("lambda", "lam"), ("lam", "lam"), ("gamma", "gamma"), ("feature", "feature"))
        known = {key: meta[name] for name, key in names if meta.get(name) is not None}
        return cls(**{**known, **overrides})


def full_res_probs(device_probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The device's coarse probabilities (C, h, w) upsampled bilinearly to the pseudo-label's (H, W) (as eq. 4 upsamples).

    Only probabilities travel (uint8, wire/payload.py), so they are upsampled rather than logits; argmax can differ
    from the device's own map at a few boundary pixels.
    """
    t = torch.from_numpy(np.ascontiguousarray(device_probs, dtype=np.float32))[None]
    return resize(t, size)[0].numpy()


def dcam_evidence(device_probs: np.ndarray, pseudo_label: np.ndarray, ignore_index: int = 255, settings: DcamSettings = DcamSettings()) -> DcamEvidence:
    """Alg. 2 lines 3-4 for one frame: the class mask (eq. 13) and U_new (eq. 5 + 19), both at the frame's resolution.

    The device's probabilities come up to the pseudo-label's resolution (as the device fit of U does), so
    y_device is the device's full-resolution prediction, exactly what the user sees.
    """
    pseudo = np.asarray(pseudo_label).astype(np.int64)
    probs = full_res_probs(device_probs, pseudo.shape)
    num_classes = probs.shape[0]
    valid = (pseudo != ignore_index) & (pseudo >= 0) & (pseudo < num_classes)
    device_pred = channel_argmax(probs)
    disagreement = class_disagreement(device_pred, pseudo, num_classes, valid)
    stats = frame_stats(probs, pseudo, ignore_index, pred=device_pred, entropy=settings.feature == "entropy",
                        pixel_moments=settings.feature == "pixel", dtype=torch.float32)
    u_new = closed_form_u_new(stats, settings)
    return DcamEvidence(class_mask(disagreement, settings.min_disagreement), u_new, disagreement)


def dcam_blend(u: np.ndarray, evidence: DcamEvidence, alpha: float, mode: str = "rows_cols", rescale: bool = True) -> tuple[np.ndarray, bool]:
    """Alg. 2 line 5, eq. 14: U' = ((1 - alpha) U + alpha U_new) * M + U * (1 - M), M = matrix_mask(m)."""
    if not evidence.any_flagged or alpha == 0.0:
        return u, False
    u_new = rescale_like(evidence.u_new, u) if rescale else evidence.u_new
    mask = matrix_mask(evidence.class_mask, mode)
    new_u = np.where(mask, (1.0 - alpha) * u + alpha * u_new, u).astype(u.dtype, copy=False)
    return new_u, not np.array_equal(new_u, u)


def dcam_update(
    u: np.ndarray, device_probs: np.ndarray, pseudo_label: np.ndarray, alpha: float, ignore_index: int = 255,
    settings: DcamSettings | None = None,
) -> tuple[np.ndarray, bool]:
    """Return (U', changed) for one uploaded frame. u: (C,C); device_probs: (C,h,w) in [0,1]; pseudo_label: (H,W).

    `settings` default to the device fit's defaults (eq. 5 'pixels', lambda 0.5, gamma 1), the rows-and-columns
    mask and the any-pixel reading of eq. 13; pass DcamSettings.from_meta(U.meta) to follow a fitted U.
    """
    u = np.asarray(u)
    device_probs = np.asarray(device_probs)
    check_inputs(u, device_probs, np.asarray(pseudo_label), alpha)
    s = settings or DcamSettings()
    evidence = dcam_evidence(device_probs, pseudo_label, ignore_index, s)
    return dcam_blend(u, evidence, alpha, s.mode, s.rescale)


@dataclass(frozen=True)
class Dcam:
    """DCAM as the cloud runs it: the evidence of each upload where the frame was segmented (stateless), and the
    eq. 14 blend where the device's U lives (cloud/states.py). `alpha` = 0 turns it off."""

    alpha: float = 0.0
    settings: DcamSettings = field(default_factory=DcamSettings)
    ignore_index: int = 255

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"dcam_alpha must be in [0, 1] (eq. 14), got {self.alpha}")

    @property
    def on(self) -> bool:
        return self.alpha > 0.0

    def evidence(self, device_probs: np.ndarray | None, pseudo_label: np.ndarray) -> DcamEvidence | None:
        """Alg. 2 lines 3-4 for one upload; None when DCAM is off or the upload carries no device probabilities."""
        if not self.on or device_probs is None:
            return None
        return dcam_evidence(device_probs, pseudo_label, self.ignore_index, self.settings)

    def blend(self, u: np.ndarray, evidence: DcamEvidence) -> tuple[np.ndarray, bool]:
        """Alg. 2 line 5 (eq. 14) on the device's current U: (U', changed)."""
        if evidence.u_new.shape != u.shape:
            raise ValueError(f"DCAM evidence for {len(evidence.class_mask)} classes cannot update a U of shape {u.shape}")
        return dcam_blend(u, evidence, self.alpha, self.settings.mode, self.settings.rescale)
