"""Frames as model input: where uint8 pictures become tensors.

Every layer that feeds a model (the device runtime, the cloud service, U fitting, evaluation, load
tests) converts frames here, so they all see the very same tensor: float32, channels first, [0, 1].
The models normalise further themselves (their own mean and std), so nothing else happens here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) frames of one size -> float (N, 3, H, W) in [0, 1].

    The result keeps the stacked frames' memory order (channels last); convolutions accept it as it is.
    """
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
