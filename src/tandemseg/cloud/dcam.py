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
import torch

from tandemseg.device.uncertainty import FrameStats, closed_form_from_moments, rescale_like
from tandemseg.models.blocks import resize

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


def frame_statistics(probs: np.ndarray, device_pred: np.ndarray, pseudo: np.ndarray, valid: np.ndarray) -> FrameStats:
    """Eq. 5 sums of one frame with the pseudo-label as y: the same FrameStats as device/uncertainty.frame_stats.

    One (C, HW) x (HW, 3) product in torch (about 30x faster than masked elementwise passes at 360x480, and
    it runs on torch's thread pool: numpy's BLAS would start its own threads next to torch's and, on a busy
    server, spin against them; measured 66 ms vs 1.6 ms per frame). DCAM runs on every upload.
    """
    c = probs.shape[0]
    flat = torch.from_numpy(np.ascontiguousarray(probs)).reshape(c, -1)  # (C, HW)
    correct = torch.from_numpy(((device_pred == pseudo) & valid).reshape(-1))
    wrong = torch.from_numpy(valid.reshape(-1)) & ~correct
    weights = torch.stack([torch.ones_like(correct), correct, wrong], 1).to(flat.dtype)  # (HW, 3)
    sums = (flat @ weights).double().T.numpy()  # (3, C)
    return FrameStats(q=sums[0] / flat.shape[1], s_pos=sums[1].copy(), s_neg=sums[2].copy(),
                      n_pos=int(correct.sum()), n_neg=int(wrong.sum()))


def closed_form_u_new(stats: FrameStats, reading: str = "pixels", lam: float = 0.5, gamma: float = 1.0) -> np.ndarray:
    """U_new of Alg. 2 line 4: eq. 19 (sign of eq. 18) from this frame's eq. 5 vectors.

    Uses the device's own eq. 5 reading and closed form (device/uncertainty.py) so that U_new and the
    fitted U are the same kind of object. An empty positive (negative) set contributes a zero moment.
    """
    q_pos, q_neg = stats.vectors(reading)
    zero = np.zeros((len(stats.q), len(stats.q)))
    m_pos = np.outer(q_pos, q_pos) if q_pos is not None else zero
    m_neg = np.outer(q_neg, q_neg) if q_neg is not None else zero
    return closed_form_from_moments(m_pos, m_neg, lam, gamma)


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

    stats: str = "pixels"  # eq. 5 reading (device/uncertainty.py STATS_READINGS)
    lam: float = 0.5  # eq. 6 lambda
    gamma: float = 1.0  # eq. 6 gamma
    min_disagreement: float = 0.0  # eq. 13: flag class c when 1 - IoU_c(device, pseudo) > this (0 = any pixel)
    mode: str = "rows_cols"  # eq. 14 mask: rows and columns of flagged classes | outer (m m^T)
    rescale: bool = True  # scale U_new to ||U||_F before blending (ranking by eq. 9 is scale-free; like with like)

    @classmethod
    def from_meta(cls, meta: dict, **overrides) -> DcamSettings:
        """Settings that follow a fitted U's metadata (UncertaintyMatrix.meta keys stats / lambda / gamma)."""
        known = {key: meta[name] for name, key in (("stats", "stats"), ("lambda", "lam"), ("lam", "lam"), ("gamma", "gamma")) if name in meta}
        return cls(**{**known, **overrides})


def full_res_probs(device_probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The device's coarse probabilities (C, h, w) upsampled bilinearly to the pseudo-label's (H, W) (as eq. 4 upsamples).

    Only probabilities travel (uint8, wire/payload.py), so they are upsampled rather than logits; argmax can differ
    from the device's own map at a few boundary pixels.
    """
    t = torch.from_numpy(np.ascontiguousarray(device_probs, dtype=np.float32))[None]
    return resize(t, size)[0].numpy()


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
    stats = frame_statistics(probs, device_pred, pseudo, valid)
    u_new = closed_form_u_new(stats, settings.stats, settings.lam, settings.gamma)
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
