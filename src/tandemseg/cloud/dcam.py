"""STUB — DCAM (ACDC eq. 13-14), owned by the service engineer."""
from __future__ import annotations

import numpy as np


def dcam_update(u: np.ndarray, device_probs: np.ndarray, pseudo_label: np.ndarray, alpha: float, ignore_index: int = 255) -> tuple[np.ndarray, bool]:
    """Return (U', changed) for one uploaded frame. u: (C,C); device_probs: (C,h,w); pseudo_label: (h,w)."""
    raise NotImplementedError
