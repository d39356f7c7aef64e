"""ImageNet-C weather corruptions: snow, frost, fog.

Parameters are the published ImageNet-C tables (Hendrycks & Dietterich, ICLR 2019; reference code
`hendrycks/robustness/ImageNet-C/create_c/make_imagenet_c.py`). Sizes in pixels of a 224x224 crop
are multiplied by min(H, W) / 224 (snow flake size and streak length, frost crystal size).

* fog: the reference's plasma fractal (diamond-square), on a power-of-two map covering the frame
  (next power of two of the long side, as `imagecorruptions` does), cropped to the frame.
* snow: as the reference; its flake layer is motion-blurred with ImageMagick, which we replace by the
  same line kernel (see blur.py), and its `clipped_zoom` of full-size noise by drawing the noise at
  1/zoom resolution and upsampling it bilinearly (the same field, without the discarded border).
* frost: SUBSTITUTION. The reference blends the frame with a random crop of one of six photographs
  of frost on glass (frost1.png ... frost6.jpg), which are not available here. We blend, with the
  reference's weights (frame * a + frost * b), a procedurally generated frost texture: fern-like ice
  dendrites (straight needles with side branches at +-60 degrees, the hexagonal habit of ice),
  thicker in random patches, over a dim blue-grey haze with a soft glow around the crystals and
  fine grain, tinted cold blue-white. Its mean (about 0.5) and its bright, thin, branching
  structure are chosen to match the look of ImageNet-C frost; pixel statistics of the photographs
  are not reproduced exactly, so absolute frost numbers are not comparable with published ImageNet-C
  frost results (the other corruptions are).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from tandemseg.data.shifts._ops import (
    REFERENCE_SIDE,
    gaussian_blur,
    line_blur,
    luma,
    next_power_of_2,
    pick,
    plasma_fractal,
    resize_plane,
    scaled_int,
    size_scale,
    smooth_reflect,
    to_float,
    to_uint8,
)

# (mean, std, zoom, threshold, blur radius px, blur sigma px, frame weight)
SNOW = (
    (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
    (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
    (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
    (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
    (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
)
FROST = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))  # (frame weight, frost weight)
FOG = ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4))  # (fog strength, fractal wibble decay)

# Procedural frost texture, lengths in pixels of a 224x224 crop.
FROST_STEMS_PER_CROP = 90  # dendrite stems per 224x224 area
FROST_NEEDLES_PER_CROP = 2500  # short single needles per 224x224 area
FROST_STEM_LENGTH = (8.0, 70.0)  # stems span this range (log-uniform: many small, few large)
FROST_BRANCH_SPACING = 3.0  # distance between side-branch pairs along a stem
FROST_BRANCH_ANGLE = math.pi / 3  # ice branches at 60 degrees (hexagonal crystal habit)
FROST_TINT = np.array([0.86, 0.93, 1.0], dtype=np.float32)  # cold blue-white


def fog(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add a plasma-fractal haze and renormalise so the brightest input value keeps its level."""
    strength, decay = pick(FOG, severity)
    x = to_float(image)
    h, w = x.shape[:2]
    haze = plasma_fractal(next_power_of_2(max(h, w)), decay, rng)[:h, :w, None]
    max_val = x.max()
    return to_uint8((x + strength * haze) * (max_val / (max_val + strength)))


def _snow_layer(h: int, w: int, scale: float, params: tuple, rng: np.random.Generator) -> np.ndarray:
    """Falling flakes: zoomed thresholded noise, streaked by motion blur, quantised to 8 bits."""
    mean, std, zoom, threshold, radius, sigma, _ = params
    zoom *= scale  # flake size grows with the frame
    coarse = rng.normal(mean, std, size=(math.ceil(h / zoom), math.ceil(w / zoom))).astype(np.float32)
    layer = resize_plane(coarse, (h, w), box=(0.0, 0.0, w / zoom, h / zoom))
    layer[layer < threshold] = 0
    layer = np.clip(layer, 0, 1)
    layer = line_blur(layer, scaled_int(radius, scale), max(sigma * scale, 0.5), rng.uniform(-135, -45))
    # the reference round-trips the layer through an 8-bit PNG
    return (np.round(layer * 255) / 255).astype(np.float32)


def snow(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Snowfall: a whitened, greyer frame plus two flake layers (the second is the first rotated 180)."""
    params = pick(SNOW, severity)
    x = to_float(image)
    h, w = x.shape[:2]
    layer = _snow_layer(h, w, size_scale(image), params, rng)[..., None]
    weight = params[6]
    # snow-light: mix towards a brightened grey version of the scene
    x = weight * x + (1 - weight) * np.maximum(x, luma(x)[..., None] * 1.5 + 0.5)
    return to_uint8(x + layer + np.rot90(layer, k=2))


def _side_branches(parents: np.ndarray, spacing: float, reach: tuple[float, float], dim: tuple[float, float],
                   rng: np.random.Generator) -> np.ndarray:
    """Pairs of branches at +-60 degrees (jittered) every `spacing` along each parent segment.

    A branch's length is a random fraction `reach` of the parent length still ahead of it, so
    branches shorten towards the tip (the feathery shape of frost dendrites); its brightness is the
    parent's times a random factor `dim`.
    """
    y0, x0, angle, length, bright = parents.T
    per_parent = np.floor(length / spacing).astype(int)
    owner = np.repeat(np.arange(len(parents)), per_parent)
    t = (np.arange(owner.size) - np.repeat(np.cumsum(per_parent) - per_parent, per_parent) + 0.5) * spacing
    owner, t = np.repeat(owner, 2), np.repeat(t, 2)
    side = np.tile([1.0, -1.0], owner.size // 2)
    turn = side * FROST_BRANCH_ANGLE + rng.normal(0, 0.15, owner.size)
    return np.stack(
        [
            y0[owner] + t * np.sin(angle[owner]),
            x0[owner] + t * np.cos(angle[owner]),
            angle[owner] + turn,
            (length[owner] - t) * rng.uniform(*reach, owner.size),
            bright[owner] * rng.uniform(*dim, owner.size),
        ],
        axis=1,
    )


def _random_segments(n: int, h: int, w: int, lengths: tuple[float, float], bright: tuple[float, float],
                     rng: np.random.Generator) -> np.ndarray:
    """`n` segments at random places and angles, log-uniform lengths: rows (y0, x0, angle, length, brightness)."""
    lo, hi = lengths
    return np.stack(
        [
            rng.uniform(-0.05 * h, 1.05 * h, n),
            rng.uniform(-0.05 * w, 1.05 * w, n),
            rng.uniform(0, 2 * math.pi, n),
            np.exp(rng.uniform(math.log(lo), math.log(hi), n)),
            rng.uniform(*bright, n),
        ],
        axis=1,
    )


def _dendrite_segments(h: int, w: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Straight segments of ice: dendrite stems with two generations of side branches, plus a dense
    layer of short needles (the granular frost between the large crystals)."""
    crops = h * w / (REFERENCE_SIDE * scale) ** 2  # frame area in 224x224 crops at this scale
    lo, hi = FROST_STEM_LENGTH
    stems = _random_segments(max(1, round(FROST_STEMS_PER_CROP * crops)), h, w, (lo * scale, hi * scale), (0.5, 0.95), rng)
    spacing = FROST_BRANCH_SPACING * scale
    branches = _side_branches(stems, spacing, (0.2, 0.5), (0.6, 0.95), rng)
    twigs = _side_branches(branches, 0.8 * spacing, (0.2, 0.6), (0.6, 0.95), rng)
    needles = _random_segments(round(FROST_NEEDLES_PER_CROP * crops), h, w, (1.0 * scale, 4.0 * scale), (0.15, 0.45), rng)
    return np.concatenate([stems, branches, twigs, needles], axis=0)


def _rasterise(segments: np.ndarray, h: int, w: int) -> np.ndarray:
    """Draw 1-px segments into an (h, w) canvas, keeping the brightest value per pixel."""
    step = 0.7  # sample spacing along a segment: < 1/sqrt(2) keeps diagonal lines connected
    y0, x0, angle, length, bright = segments.T.astype(np.float32)
    counts = np.ceil(length / step).astype(int) + 1
    starts = np.cumsum(counts) - counts
    t = (np.arange(counts.sum(), dtype=np.float32) - np.repeat(starts, counts).astype(np.float32)) * step
    ys = np.rint(np.repeat(y0, counts) + t * np.repeat(np.sin(angle), counts)).astype(np.intp)
    xs = np.rint(np.repeat(x0, counts) + t * np.repeat(np.cos(angle), counts)).astype(np.intp)
    inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    canvas = np.zeros((h, w), dtype=np.float32)
    # where segments cross, the brighter wins (a plain assignment's order is unspecified for repeats)
    np.maximum.at(canvas, (ys[inside], xs[inside]), np.repeat(bright, counts)[inside])
    return canvas


def frost_texture(h: int, w: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    """A procedural stand-in for ImageNet-C's frost photographs: float32 (h, w, 3) in [0, 1]."""
    # patchiness: smooth random field on a coarse grid (about 5 cells per 224 px)
    cells = (max(2, round(h / (45 * scale))), max(2, round(w / (45 * scale))))
    patches = np.clip(resize_plane(rng.random(cells, dtype=np.float32), (h, w), resample=Image.Resampling.BICUBIC), 0, 1)
    crystals = _rasterise(_dendrite_segments(h, w, scale, rng), h, w)
    sigma = 0.5 * scale
    # a blurred 1-px line peaks at erf(1 / (2 sqrt(2) sigma)); rescale so crystal cores reach ~1
    sharp = gaussian_blur(crystals, sigma) / math.erf(1 / (2 * math.sqrt(2) * sigma))
    glow = smooth_reflect(crystals, 4 * scale)  # wide blur: the DCT route costs the same for any sigma
    density = 0.35 + 0.65 * patches
    haze = 0.22 + 0.18 * patches
    tex = haze + (1 - haze) * np.clip(sharp * density, 0, 1) + 0.6 * glow * density
    tex += rng.normal(0, 0.03, size=(h, w)).astype(np.float32)  # ice grain
    return np.clip(tex[..., None] * FROST_TINT, 0, 1)


def frost(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Ice on the lens or windscreen: frame * a + frost texture * b (reference weights)."""
    frame_weight, frost_weight = pick(FROST, severity)
    x = to_float(image)
    texture = frost_texture(x.shape[0], x.shape[1], size_scale(image), rng)
    return to_uint8(frame_weight * x + frost_weight * texture)
