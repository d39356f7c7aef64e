"""ImageNet-C noise corruptions: gaussian_noise, shot_noise, impulse_noise.

Parameters are the published ImageNet-C tables (Hendrycks & Dietterich, ICLR 2019; reference code
`hendrycks/robustness/ImageNet-C/create_c/make_imagenet_c.py`, identical in `imagecorruptions`).
Noise is per pixel, so nothing depends on the frame size.
"""

from __future__ import annotations

import numpy as np

from tandemseg.data.shifts._ops import pick, to_float, to_uint8

GAUSSIAN_NOISE = (0.08, 0.12, 0.18, 0.26, 0.38)  # std of additive noise, image in [0, 1]
SHOT_NOISE = (60, 25, 12, 5, 3)  # photons per unit intensity: fewer photons, more noise
IMPULSE_NOISE = (0.03, 0.06, 0.09, 0.17, 0.27)  # fraction of values replaced by salt or pepper


def gaussian_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Additive white Gaussian noise, independent per pixel and channel."""
    scale = pick(GAUSSIAN_NOISE, severity)
    x = to_float(image)
    return to_uint8(x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(scale))


def shot_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Poisson (photon-counting) noise: x -> Poisson(x * c) / c."""
    photons = pick(SHOT_NOISE, severity)
    x = to_float(image)
    return to_uint8(rng.poisson(x * photons).astype(np.float32) / np.float32(photons))


def impulse_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Salt-and-pepper noise as skimage.util.random_noise(mode='s&p'): each value (per channel, so the
    dots are coloured) is replaced with probability `amount`, half by 1 (salt) and half by 0 (pepper)."""
    amount = pick(IMPULSE_NOISE, severity)
    out = image.copy()
    u = rng.random(image.shape, dtype=np.float32)
    # one uniform draw decides both events: u < amount/2 -> pepper, amount/2 <= u < amount -> salt
    out[u < amount / 2] = 0
    out[(u >= amount / 2) & (u < amount)] = 255
    return out
