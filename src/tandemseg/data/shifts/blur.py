"""ImageNet-C blur corruptions: defocus_blur, glass_blur, motion_blur, zoom_blur.

Parameter tables are the published ImageNet-C ones (Hendrycks & Dietterich, ICLR 2019; reference code
`hendrycks/robustness/ImageNet-C/create_c/make_imagenet_c.py`). Radii, sigmas and displacements are
in pixels of a 224x224 crop; we multiply them by min(H, W) / 224 so a blur covers the same fraction
of the frame at any size (zoom factors are already relative and are used as published).

Departures from the reference, each for speed or because its dependency is absent:

* motion_blur: the reference calls ImageMagick's MotionBlurImage through Wand. We build the same
  kernel (a one-sided line of 2*radius+1 Gaussian-weighted taps, sigma from the table, at a random
  angle in [-45, 45) degrees, as `imagecorruptions` ports it to numpy) and apply it with an FFT.
* glass_blur: the reference swaps each interior pixel in turn with a random neighbour
  (offset drawn from [-d, d) per axis, d = max_delta), a Python loop of ~H*W iterations per pass.
  We read one pass as "every interior pixel is displaced by an independent offset from [-d, d)"
  and implement it as one vectorised gather (out[p] = in[p - offset]). The reference's in-place
  swaps also let a pixel ride a chain of swaps further up-left; the gather does not, but after the
  second Gaussian blur both give the same frosted-glass look at the same scale.
* zoom_blur: the reference sums scipy.ndimage.zoom's (order 1) of the centre crop; we resample the
  exact centre box bilinearly with PIL (the same interpolation on 8-bit layers, ~30x faster).
* defocus_blur: cv2.filter2D with a disk kernel becomes an FFT correlation with reflect-101 borders.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from tandemseg.data.shifts._ops import (
    correlate,
    disk_kernel,
    gaussian_blur,
    line_blur,
    pick,
    scaled_int,
    size_scale,
    to_float,
    to_uint8,
)

DEFOCUS_BLUR = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))  # (disk radius px, anti-alias sigma)
GLASS_BLUR = ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))  # (sigma, max_delta px, passes)
MOTION_BLUR = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))  # (radius px, sigma px)
# zoom factors, as np.arange(start, stop, step) in the reference
ZOOM_BLUR = ((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03))


def defocus_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Out-of-focus lens: correlation with an anti-aliased disk (deterministic; `rng` unused)."""
    radius, alias_blur = pick(DEFOCUS_BLUR, severity)
    kernel = disk_kernel(radius * size_scale(image), alias_blur)
    return to_uint8(correlate(to_float(image), kernel, pad_mode="reflect"))


def _displace_locally(x: np.ndarray, delta: int, rng: np.random.Generator) -> np.ndarray:
    """One vectorised pass of glass_blur's pixel shuffle (see the module docstring)."""
    h, w = x.shape[:2]
    rows = np.arange(delta + 1, h - delta + 1)  # the reference visits rows H-d .. d+1
    cols = np.arange(delta + 1, w - delta + 1)
    if rows.size == 0 or cols.size == 0:
        return x
    offsets = rng.integers(-delta, delta, size=(2, rows.size, cols.size), dtype=np.int32)
    # the pixel displaced by (dy, dx) to p came from p - (dy, dx); the result is a gather
    src_r = np.minimum(rows[:, None] - offsets[0], h - 1)
    src_c = np.minimum(cols[None, :] - offsets[1], w - 1)
    source = np.arange(h * w, dtype=np.int32).reshape(h, w)
    source[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = src_r * w + src_c
    return x.reshape(h * w, -1).take(source.ravel(), axis=0).reshape(x.shape)


def glass_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Frosted glass: blur, locally shuffle pixels (`passes` times), blur again."""
    sigma, max_delta, passes = pick(GLASS_BLUR, severity)
    scale = size_scale(image)
    sigma *= scale
    delta = scaled_int(max_delta, scale)
    x = gaussian_blur(to_float(image), sigma)
    for _ in range(passes):
        x = _displace_locally(x, delta, rng)
    return to_uint8(gaussian_blur(x, sigma))


def motion_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Camera shake along a straight line at a random angle in [-45, 45) degrees."""
    radius, sigma = pick(MOTION_BLUR, severity)
    scale = size_scale(image)
    angle = rng.uniform(-45, 45)
    return to_uint8(line_blur(to_float(image), scaled_int(radius, scale), max(sigma * scale, 0.5), angle))


def _centre_zoom_sum(image: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Sum over `factors` of the frame magnified about its centre (bilinear, same size).

    uint16 is enough: at most 17 layers of 255.
    """
    h, w = image.shape[:2]
    frame = Image.fromarray(image)
    total = np.zeros(image.shape, dtype=np.uint16)
    for factor in factors:
        if factor == 1.0:  # the identity zoom: skip the resampling
            total += image
            continue
        ch, cw = h / factor, w / factor
        box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
        # 8-bit layers: their rounding error (std 0.3 levels) averages out over the 11-16 layers
        total += np.asarray(frame.resize((w, h), Image.Resampling.BILINEAR, box=box))
    return total


def zoom_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Fast zoom during exposure: mean of the frame and its centre zooms (deterministic; `rng` unused)."""
    factors = np.arange(*pick(ZOOM_BLUR, severity))
    total = _centre_zoom_sum(image, factors) + image
    return to_uint8(total.astype(np.float32) / np.float32(255 * (len(factors) + 1)))
