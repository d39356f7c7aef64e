"""The shift registry: name -> function, grouped by family.

The 15 ImageNet-C corruptions (Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to
Common Corruptions and Perturbations", ICLR 2019) in the paper's order, severities 1..5, plus the
`dusk` and `night` lighting shifts, which take no severity. Every function has the signature
`fn(image: (H, W, 3) uint8, severity: int, rng: np.random.Generator) -> (H, W, 3) uint8`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tandemseg.data.shifts import blur, digital, lighting, noise, weather

ShiftFn = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

SHIFTS: dict[str, ShiftFn] = {
    "gaussian_noise": noise.gaussian_noise,
    "shot_noise": noise.shot_noise,
    "impulse_noise": noise.impulse_noise,
    "defocus_blur": blur.defocus_blur,
    "glass_blur": blur.glass_blur,
    "motion_blur": blur.motion_blur,
    "zoom_blur": blur.zoom_blur,
    "snow": weather.snow,
    "frost": weather.frost,
    "fog": weather.fog,
    "brightness": digital.brightness,
    "contrast": digital.contrast,
    "elastic_transform": digital.elastic_transform,
    "pixelate": digital.pixelate,
    "jpeg_compression": digital.jpeg_compression,
    "dusk": lighting.dusk,
    "night": lighting.night,
}

SHIFT_FAMILIES: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog"),
    "digital": ("brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression"),
    "lighting": ("dusk", "night"),
}

# The 15 ImageNet-C corruptions, which take a severity 1..5.
CORRUPTIONS: tuple[str, ...] = tuple(n for fam in ("noise", "blur", "weather", "digital") for n in SHIFT_FAMILIES[fam])
# Shifts without a severity: written as a bare name ("dusk"), carried with severity 0.
SEVERITY_FREE: frozenset[str] = frozenset(SHIFT_FAMILIES["lighting"])
# Shifts that draw no random numbers: the same frame gives the same output for every seed.
DETERMINISTIC: frozenset[str] = frozenset(
    {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression"}
)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)


def family_of(name: str) -> str:
    """The family a registered shift belongs to."""
    for family, names in SHIFT_FAMILIES.items():
        if name in names:
            return family
    raise KeyError(name)
