"""Lighting shifts beyond ImageNet-C: `dusk` and `night` (no severity; the argument is ignored).

ImageNet-C's `brightness` only brightens. Driving data is also captured at dusk and at night, where
exposure, colour and noise all change together; these two shifts model that with a few physically
motivated steps. They are renderings of a daytime frame, not a relighting of the scene: shadows
and light sources stay where the daytime frame has them.

dusk (sun just below the horizon, camera on auto exposure that has not fully caught up):
  1. linearise (sRGB approximated by gamma 2.2);
  2. lower the exposure by about 1.3 stops (x 0.4 in linear light);
  3. warm white balance (R x 1.2, G x 0.92, B x 0.62): low sunlight crosses more atmosphere, which
     scatters blue away (Rayleigh), so the remaining light is orange;
  4. re-encode, and flatten contrast to 75 % around the frame mean: light is diffuse, and haze
     lifts the shadows; add a faint warm veil (the glowing sky scattered into the lens);
  5. mild sensor noise from the higher gain: Gaussian, std sqrt(0.008^2 + 0.015^2 * level).

night (street lighting, long exposure or high gain):
  1. strong darkening with a gamma: level -> 0.4 * level^1.6 (highlights to 40 %, mid-grey to 13 %,
     shadows crushed to near black);
  2. blue cast (R x 0.65, G x 0.82, B x 1.2): the look of moonlit / mesopic scenes and of cameras
     white-balanced for warm lamps;
  3. light bloom where the daytime frame was bright (luma above ~0.8): those pixels keep part of
     their colour (lamps, lit windows, headlights stay lit) and spill a warm Gaussian glow
     (sigma 1.5 % of the short side) onto their surroundings, screen-blended so light only adds.
     A bright pixel counts less the more of its neighbourhood (Gaussian, sigma 8 % of the short
     side) is bright too, down to nothing when 40 % is: a lamp is small, and a large bright
     area (the daytime sky) must go dark like the rest of the scene instead of glowing;
  4. heavy sensor noise: Gaussian per channel (colour noise), std sqrt(0.02^2 + 0.04^2 * level).
"""

from __future__ import annotations

import numpy as np

from tandemseg.data.shifts._ops import luma, smooth_reflect, to_float, to_uint8

GAMMA = 2.2

DUSK_EXPOSURE = 0.4
DUSK_WHITE_BALANCE = np.array([1.2, 0.92, 0.62], dtype=np.float32)
DUSK_CONTRAST = 0.75
DUSK_VEIL = np.array([0.05, 0.03, 0.015], dtype=np.float32)
DUSK_NOISE = (0.008, 0.015)  # (read-noise std, shot-noise std at full level)

NIGHT_GAIN = 0.4
NIGHT_GAMMA = 1.6
NIGHT_TINT = np.array([0.65, 0.82, 1.2], dtype=np.float32)
NIGHT_BRIGHT = (0.78, 0.95)  # luma ramp over which a daytime pixel counts as a light source
NIGHT_LAMP = np.array([1.0, 0.85, 0.6], dtype=np.float32)  # warm glow colour
NIGHT_CORE = 0.9  # fraction of its daytime colour a light source keeps
NIGHT_GLOW = 1.2  # strength of the glow around a light source
NIGHT_BLOOM_SIGMA = 0.015  # of the short side
NIGHT_AREA_SIGMA = 0.08  # of the short side: neighbourhood that decides "lamp" versus "sky"
NIGHT_NOISE = (0.02, 0.04)


def _sensor_noise(x: np.ndarray, read: float, shot: float, rng: np.random.Generator) -> np.ndarray:
    """Add signal-dependent Gaussian noise (read noise plus a shot-noise term growing with level)."""
    std = np.sqrt(read**2 + shot**2 * np.clip(x, 0, 1))
    return x + std * rng.standard_normal(x.shape, dtype=np.float32)


def _tone_curve(image: np.ndarray, curve) -> np.ndarray:
    """Apply a per-channel function of the 8-bit level through a 256 x 3 table (no per-pixel powers)."""
    levels = np.arange(256, dtype=np.float32)[:, None] / np.float32(255)
    table = np.asarray(curve(levels), dtype=np.float32)  # (256, 3)
    return table[image, np.arange(3)]


def dusk(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Evening light: darker, orange, flatter, slightly noisy (see the module docstring)."""
    # steps 1-3 and the re-encoding depend on a pixel's own level and channel only
    x = _tone_curve(image, lambda v: np.clip(v**GAMMA * DUSK_EXPOSURE * DUSK_WHITE_BALANCE, 0, 1) ** (1 / GAMMA))
    x = (x - x.mean()) * DUSK_CONTRAST + x.mean() + DUSK_VEIL
    return to_uint8(_sensor_noise(x, *DUSK_NOISE, rng))


def _light_sources(x: np.ndarray) -> np.ndarray:
    """Per-pixel strength (H, W) of daytime-bright pixels treated as lights, damped inside large areas."""
    lo, hi = NIGHT_BRIGHT
    bright = np.clip((luma(x) - lo) / (hi - lo), 0, 1)
    area = smooth_reflect(bright, NIGHT_AREA_SIGMA * min(x.shape[:2]))
    return bright * np.clip(1.0 - 2.5 * area, 0.0, 1.0).astype(np.float32)


def night(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Night: gamma-darkened, blue, bright pixels bloom, strong sensor noise (see the module docstring)."""
    x = to_float(image)
    dark = _tone_curve(image, lambda v: NIGHT_GAIN * v**NIGHT_GAMMA * NIGHT_TINT)
    sources = _light_sources(x)
    core = sources[..., None] * x * NIGHT_CORE
    glow = smooth_reflect(sources, NIGHT_BLOOM_SIGMA * min(x.shape[:2]))[..., None] * (NIGHT_LAMP * NIGHT_GLOW)
    # screen blend: each light term brightens without pushing past white
    lit = 1 - (1 - np.clip(dark, 0, 1)) * (1 - np.clip(core, 0, 1)) * (1 - np.clip(glow, 0, 1))
    return to_uint8(_sensor_noise(lit, *NIGHT_NOISE, rng))
