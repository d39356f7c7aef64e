"""DCAM: the cloud's class-masked update of a device's uncertainty matrix U (ACDC sec. 3.2.2, eq. 13-14, Alg. 2).

For one uploaded frame the cloud's own prediction is the pseudo-label. The update splits in two steps:

1. `dcam_evidence` (stateless, per frame): the class mask m (eq. 13) and U_new, the closed-form U
   (appendix A.4.1, eq. 5 + 19) fitted to the frame's pseudo-labelled positive/negative statistics.
2. `dcam_blend` (needs the device's current U): eq. 14,
       U' = ((1 - alpha) U + alpha U_new) * M + U * (1 - M),
   with M = (m 1^T + 1 m^T) > 0, the C x C mask of every row and column of a flagged class.

The split matters for scale-out: step 1 runs on whichever replica segmented the frame; step 2 is a
cheap C x C blend applied atomically where the per-device state lives (cloud/service.py, ray_app.py).

Reading of eq. 13 (docs/methods/dcam.md has the argument): M_c = 1(y_pseudo != y_device) is a
*class-level* indicator. Class c is flagged when, among the pixels that the pseudo-label or the device
labels c, the fraction where the two disagree exceeds `min_disagreement` (default 0: any pixel, the
literal reading). That fraction is exactly 1 - IoU_c(device, pseudo-label). Classes absent from both
maps carry no evidence and are never flagged. Masking the C x C matrix: the score u = q U q^T =
sum_ij q_i q_j U_ij (eq. 9) reaches class c only through row c and column c (d u / d U_ij = q_i q_j), so
"the parameters related to a misclassified class" are its row and column; the rest stays untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


def resize_label_nearest(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resample of an (H, W) label map to (h, w), sampling at pixel centres.

    The pseudo-label is at full resolution while the device's probabilities are at its coarse output
    resolution (eq. 5 defines p(x) in R^{C x H/s x W/s}); the statistics are computed where the device's
    probabilities live, so the label comes down to them rather than the probabilities up.
    """
    h_in, w_in = label.shape
    h, w = size
    if (h, w) == (h_in, w_in):
        return label
    rows = np.minimum(((np.arange(h) + 0.5) * h_in / h).astype(np.int64), h_in - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * w_in / w).astype(np.int64), w_in - 1)
    return label[rows[:, None], cols[None, :]]


def class_disagreement(device_pred: np.ndarray, pseudo: np.ndarray, num_classes: int, valid: np.ndarray) -> np.ndarray:
    """Per class c: the share of the union {y_dev = c} | {y_pseudo = c} where the two disagree = 1 - IoU_c (NaN if absent)."""
    d = device_pred[valid].astype(np.int64)
    p = pseudo[valid].astype(np.int64)
    inter = np.bincount(p[d == p], minlength=num_classes)[:num_classes].astype(np.float64)
    union = (np.bincount(d, minlength=num_classes)[:num_classes] + np.bincount(p, minlength=num_classes)[:num_classes]).astype(np.float64) - inter
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


def frame_statistics(device_probs: np.ndarray, pseudo: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 5 for one frame: q+ = (1/HW) sum p(x) 1{y_dev = y_pseudo}, q- = (1/HW) sum p(x) 1{y_dev != y_pseudo}.

    The pseudo-label stands in for the ground truth y; ignored pixels count in neither sum nor in HW.
    """
    probs = device_probs.reshape(device_probs.shape[0], -1).astype(np.float64)[:, valid.reshape(-1)]
    device_pred = device_probs.argmax(0).reshape(-1)[valid.reshape(-1)]
    correct = device_pred == pseudo.reshape(-1)[valid.reshape(-1)]
    n = max(int(valid.sum()), 1)
    return (probs * correct).sum(1) / n, (probs * ~correct).sum(1) / n


def _fallback_closed_form_u(q_pos: np.ndarray, q_neg: np.ndarray, lam: float = 0.5, gamma: float = 1.0) -> np.ndarray:
    """Eq. 18 solved for U when tandemseg.device.uncertainty is unavailable.

    dL/dU = (1-lam) E+[q q^T] - lam E-[q q^T] + 2 gamma U = 0 gives U = (lam E- - (1-lam) E+) / (2 gamma):
    eq. 19 as printed has the opposite sign, which would *minimise* the score of negatives.
    """
    q_pos, q_neg = np.atleast_2d(q_pos), np.atleast_2d(q_neg)
    e_pos = q_pos.T @ q_pos / len(q_pos)
    e_neg = q_neg.T @ q_neg / len(q_neg)
    return (lam * e_neg - (1.0 - lam) * e_pos) / (2.0 * gamma)


def closed_form_u(q_pos: np.ndarray, q_neg: np.ndarray) -> np.ndarray:
    """U from positive/negative statistics: the device's own closed form (device/uncertainty.py) when present."""
    try:
        from tandemseg.device.uncertainty import closed_form_u as device_closed_form
    except ImportError:
        return _fallback_closed_form_u(q_pos, q_neg)
    return np.asarray(device_closed_form(np.atleast_2d(q_pos), np.atleast_2d(q_neg)), dtype=np.float64)


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


def dcam_evidence(
    device_probs: np.ndarray, pseudo_label: np.ndarray, ignore_index: int = 255, min_disagreement: float = 0.0
) -> DcamEvidence:
    """Step 1 of Alg. 2 (lines 3-4): class mask (eq. 13) and U_new (eq. 5 + 19) for one frame."""
    num_classes = device_probs.shape[0]
    pseudo = resize_label_nearest(np.asarray(pseudo_label), device_probs.shape[1:])
    valid = (pseudo != ignore_index) & (pseudo >= 0) & (pseudo < num_classes)
    device_pred = device_probs.argmax(0)
    disagreement = class_disagreement(device_pred, pseudo, num_classes, valid)
    q_pos, q_neg = frame_statistics(device_probs, pseudo, valid)
    return DcamEvidence(class_mask(disagreement, min_disagreement), closed_form_u(q_pos, q_neg), disagreement)


def dcam_blend(u: np.ndarray, evidence: DcamEvidence, alpha: float, mode: str = "rows_cols") -> tuple[np.ndarray, bool]:
    """Step 2 of Alg. 2 (line 5), eq. 14: U' = ((1-alpha) U + alpha U_new) * M + U * (1 - M)."""
    if not evidence.any_flagged or alpha == 0.0:
        return u, False
    mask = matrix_mask(evidence.class_mask, mode)
    blended = (1.0 - alpha) * u + alpha * evidence.u_new.astype(u.dtype, copy=False)
    new_u = np.where(mask, blended, u)
    return new_u, not np.array_equal(new_u, u)


def dcam_update(
    u: np.ndarray, device_probs: np.ndarray, pseudo_label: np.ndarray, alpha: float, ignore_index: int = 255,
    min_disagreement: float = 0.0, mode: str = "rows_cols",
) -> tuple[np.ndarray, bool]:
    """Return (U', changed) for one uploaded frame. u: (C,C); device_probs: (C,h,w) in [0,1]; pseudo_label: (H,W)."""
    u = np.asarray(u)
    device_probs = np.asarray(device_probs)
    check_inputs(u, device_probs, np.asarray(pseudo_label), alpha)
    evidence = dcam_evidence(device_probs, pseudo_label, ignore_index, min_disagreement)
    return dcam_blend(u, evidence, alpha, mode)
