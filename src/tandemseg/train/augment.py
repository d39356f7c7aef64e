"""Training augmentation: random scale, crop, flip (torch, label-safe), colour jitter (kornia),
and optional image corruptions drawn from a named subset of the shift registry.

Geometric ops are written here rather than with kornia's AugmentationSequential because labels
must be resized with nearest neighbour and padded with the ignore index, which is three lines here.
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    crop: tuple[int, int] = (288, 384)  # (H, W) training crop
    scale_range: tuple[float, float] = (0.5, 1.75)  # random rescale before cropping
    flip: bool = True
    color_jitter: float = 0.3  # strength of brightness/contrast/saturation jitter
    # Hue jitter; None: a tenth of color_jitter. 0 skips kornia's RGB<->HSV round trip, which costs
    # 0.3-1 s per batch of 8 at 360x480 on one CPU thread (more than the device model's own step).
    hue: float | None = None
    corruptions: tuple[str, ...] = ()  # shift names applied at a random severity 1..5 with probability corrupt_p
    corrupt_p: float = 0.0


def corrupt(image: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """With probability corrupt_p apply one of cfg.corruptions at a random severity."""
    if not cfg.corruptions or rng.random() >= cfg.corrupt_p:
        return image
    from tandemseg.data.shifts.registry import (
        SHIFTS,  # the registry is large; only training with corruptions needs it
    )

    name = cfg.corruptions[rng.integers(len(cfg.corruptions))]
    return SHIFTS[name](image, int(rng.integers(1, 6)), rng)


def scale_crop_flip(image: torch.Tensor, label: torch.Tensor, cfg: AugmentConfig, rng: np.random.Generator, ignore: int) -> tuple[torch.Tensor, torch.Tensor]:
    """image (3,H,W) float, label (H,W) long -> cropped (3,h,w), (h,w); pads with 0 / ignore when the scaled frame is small."""
    s = float(rng.uniform(*cfg.scale_range))
    h, w = image.shape[-2:]
    nh, nw = max(8, round(h * s)), max(8, round(w * s))
    image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    label = F.interpolate(label[None, None].float(), size=(nh, nw), mode="nearest")[0, 0].long()
    ch, cw = cfg.crop
    ph, pw = max(0, ch - nh), max(0, cw - nw)
    if ph or pw:
        image = F.pad(image, (0, pw, 0, ph), value=0.0)
        label = F.pad(label, (0, pw, 0, ph), value=ignore)
    y0 = int(rng.integers(0, image.shape[-2] - ch + 1))
    x0 = int(rng.integers(0, image.shape[-1] - cw + 1))
    image, label = image[:, y0 : y0 + ch, x0 : x0 + cw], label[y0 : y0 + ch, x0 : x0 + cw]
    if cfg.flip and rng.random() < 0.5:
        image, label = image.flip(-1), label.flip(-1)
    return image, label


class ColorJitter:
    """Batch colour jitter via kornia, seeded from our generator so runs are reproducible."""

    def __init__(self, strength: float, hue: float | None = None) -> None:
        hue = strength / 10 if hue is None else hue
        self.op = K.ColorJitter(strength, strength, strength, hue, p=0.8) if strength > 0 else None

    def __call__(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if self.op is None:
            return images
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**31)))
            return self.op(images).clamp_(0.0, 1.0)
