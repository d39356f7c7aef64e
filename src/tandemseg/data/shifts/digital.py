"""ImageNet-C digital corruptions: brightness, contrast, elastic_transform, pixelate, jpeg_compression.

Parameters are the published ImageNet-C tables (Hendrycks & Dietterich, ICLR 2019; reference code
`hendrycks/robustness/ImageNet-C/create_c/make_imagenet_c.py`, the code that generated the released
dataset). Notes on our implementation:

* brightness: the reference adds c to V in HSV (skimage rgb2hsv/hsv2rgb). With hue and saturation
  fixed, that round trip scales RGB by V'/V (black becomes grey V'), which we compute directly.
* elastic_transform: the reference first warps by a random affine map (three control points jittered
  by +-c2) with cv2.warpAffine, then displaces every pixel by Gaussian-smoothed uniform noise
  (sigma c1) times alpha c0, with map_coordinates. We compose the two maps and resample once
  (bilinear, mirrored borders), and smooth the noise in the DCT domain (exact for any sigma; the
  reference's sigma reaches 171 px, wider than the crop). Its constants are multiples of 244 (its
  comment: "244 should have been 224"); for a frame of short side S we use s = S / 224 and scale
  the affine jitter and sigma by s and alpha by s^2: smoothing white noise with an s-times wider
  Gaussian divides its amplitude by s, so alpha * s^2 keeps displacements at s times the
  reference's pixels, i.e. the same fraction of the frame.
* pixelate: box-downsample by the table factor and box-upsample, with PIL as in the reference.
* jpeg_compression: PIL JPEG encode/decode at the table quality (4:2:0 chroma, PIL's default).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tandemseg.data.shifts._ops import pick, sample_bilinear, size_scale, smooth_reflect, to_float, to_uint8

BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)  # added to HSV value
CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)  # factor on deviations from the per-channel mean
# (alpha, sigma, affine jitter) in the reference's units (multiples of 244)
ELASTIC = (
    (244 * 2, 244 * 0.7, 244 * 0.1),
    (244 * 2, 244 * 0.08, 244 * 0.2),
    (244 * 0.05, 244 * 0.01, 244 * 0.02),
    (244 * 0.07, 244 * 0.01, 244 * 0.02),
    (244 * 0.12, 244 * 0.01, 244 * 0.02),
)
PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)  # fraction of the resolution kept
JPEG_QUALITY = (25, 18, 15, 10, 7)


def brightness(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Raise HSV value by c, keeping hue and saturation (deterministic; `rng` unused)."""
    c = pick(BRIGHTNESS, severity)
    x = to_float(image)
    value = x.max(axis=2, keepdims=True)
    raised = np.minimum(value + c, 1.0)
    ratio = np.divide(raised, value, out=np.zeros_like(value), where=value > 0)
    return to_uint8(np.where(value > 0, x * ratio, raised))


def contrast(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Shrink each channel towards its mean by factor c (deterministic; `rng` unused)."""
    c = pick(CONTRAST, severity)
    x = to_float(image)
    means = x.mean(axis=(0, 1), keepdims=True)
    return to_uint8((x - means) * c + means)


def _affine_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 affine matrix mapping three (x, y) points `src` onto `dst` (cv2.getAffineTransform)."""
    a = np.hstack([src, np.ones((3, 1))])
    m = np.linalg.solve(a, dst).T  # (2, 3)
    return np.vstack([m, [0.0, 0.0, 1.0]])


def elastic_transform(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Random affine warp followed by a smooth random displacement field."""
    alpha, sigma, jitter = pick(ELASTIC, severity)
    scale = size_scale(image)
    alpha, sigma, jitter = alpha * scale**2, sigma * scale, jitter * scale
    x = to_float(image)
    h, w = x.shape[:2]

    centre = np.array([w, h], dtype=np.float64) // 2
    side = min(h, w) // 3
    src = np.array([centre + side, [centre[0] + side, centre[1] - side], centre - side])
    dst = src + rng.uniform(-jitter, jitter, size=src.shape)
    inverse = np.linalg.inv(_affine_from_points(src, dst))  # warpAffine samples the source at M^-1 p

    noise = rng.random((2, h, w), dtype=np.float32) * 2 - 1  # U(-1, 1), as the reference
    dx = smooth_reflect(noise[0], sigma) * np.float32(alpha)
    dy = smooth_reflect(noise[1], sigma) * np.float32(alpha)
    qx = np.arange(w, dtype=np.float32)[None, :] + dx  # where the displacement field reads the
    qy = np.arange(h, dtype=np.float32)[:, None] + dy  # affinely warped frame
    m = inverse.astype(np.float32)
    src_x = m[0, 0] * qx + m[0, 1] * qy + m[0, 2]
    src_y = m[1, 0] * qx + m[1, 1] * qy + m[1, 2]
    return to_uint8(sample_bilinear(x, src_y, src_x))


def pixelate(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Box-downsample to a fraction of the resolution and back (deterministic; `rng` unused)."""
    c = pick(PIXELATE, severity)
    h, w = image.shape[:2]
    im = Image.fromarray(image)
    small = im.resize((max(1, int(w * c)), max(1, int(h * c))), Image.Resampling.BOX)
    return np.asarray(small.resize((w, h), Image.Resampling.BOX), dtype=np.uint8).copy()


def jpeg_compression(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Encode as JPEG at a low quality and decode (deterministic; `rng` unused)."""
    quality = pick(JPEG_QUALITY, severity)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
