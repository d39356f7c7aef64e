"""Array operations shared by the shift families: float conversion, size scaling, filters, resampling.

Every shift works on float32 images in [0, 1] and converts back to uint8 only once, at the end.
Filters are written with numpy/scipy/PIL only (the ImageNet-C reference uses OpenCV, scikit-image and
ImageMagick, none of which this package depends on); each helper names the reference call it stands in for.

Reference: D. Hendrycks and T. Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", ICLR 2019 (ImageNet-C).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image
from scipy import fft, ndimage

# ImageNet-C corrupts 224x224 crops; spatial parameters (kernel radii, displacements) are in pixels
# of that size, so we multiply them by `size_scale` to cover the same fraction of a larger frame.
REFERENCE_SIDE = 224
SEVERITIES = (1, 2, 3, 4, 5)


def pick(table: Sequence, severity: int):
    """The row of a per-severity parameter table, with a clear error for a severity outside 1..5."""
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of 1..5, got {severity!r}")
    return table[severity - 1]


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 in [0, 1]."""
    return image.astype(np.float32) * np.float32(1 / 255)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """float in [0, 1] -> uint8, clipped and rounded (the reference truncates; rounding avoids a -0.5 bias)."""
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def size_scale(image: np.ndarray) -> float:
    """How many pixels of this frame one pixel of a 224x224 ImageNet-C crop corresponds to (short side)."""
    return min(image.shape[:2]) / REFERENCE_SIDE


def scaled_int(value: float, scale: float, minimum: int = 1) -> int:
    """A pixel count from the reference, scaled to this frame and rounded, never below `minimum`."""
    return max(minimum, int(round(value * scale)))


def luma(x: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of a float RGB image (OpenCV's COLOR_RGB2GRAY weights), shape (H, W)."""
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """skimage.filters.gaussian (mode 'nearest', truncate 4) over the two spatial axes only."""
    if sigma <= 0:
        return x
    sigmas = (sigma, sigma) + (0,) * (x.ndim - 2)
    return ndimage.gaussian_filter(x, sigmas, mode="nearest", truncate=4.0)


def smooth_reflect(field: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smooth a 2-D field with reflecting borders, for any sigma, in O(HW log HW).

    A half-sample-symmetric extension is exactly what the type-II DCT assumes, so filtering is a
    multiplication of DCT coefficients by the Gaussian's frequency response. This stands in for
    skimage's `gaussian(..., mode='reflect', truncate=3)`, which would need kernels wider than the
    image for elastic_transform's large sigmas (the 3-sigma truncation is dropped: an exact Gaussian).
    """
    h, w = field.shape
    # the 2-D Gaussian response is separable: exp(-s^2 (ky^2 + kx^2) / 2) = g(ky) g(kx)
    gy = np.exp(-0.5 * (sigma * np.pi / h * np.arange(h)) ** 2).astype(np.float32)
    gx = np.exp(-0.5 * (sigma * np.pi / w * np.arange(w)) ** 2).astype(np.float32)
    coeffs = fft.dctn(field.astype(np.float32, copy=False), type=2, norm="ortho")
    return fft.idctn(coeffs * gy[:, None] * gx[None, :], type=2, norm="ortho")


def correlate(x: np.ndarray, kernel: np.ndarray, pad_mode: str, anchor: tuple[int, int] | None = None) -> np.ndarray:
    """2-D correlation of an (H, W) or (H, W, C) image with a kernel, via real FFTs.

    out[i, j] = sum_{u, v} kernel[u, v] * x[i + u - ay, j + v - ax], with (ay, ax) = `anchor`
    (default: the kernel centre). Equivalent to cv2.filter2D with the border given by `pad_mode`
    (numpy's 'reflect' is OpenCV's default BORDER_REFLECT_101; 'edge' replicates). FFTs keep large
    blur kernels cheap.
    """
    kh, kw = kernel.shape
    ay, ax = (kh // 2, kw // 2) if anchor is None else anchor
    pads = ((ay, kh - 1 - ay), (ax, kw - 1 - ax)) + ((0, 0),) * (x.ndim - 2)
    padded = np.pad(x, pads, mode=pad_mode)
    planes = padded if x.ndim == 2 else np.moveaxis(padded, -1, 0)
    shape = (fft.next_fast_len(padded.shape[0], real=True), fft.next_fast_len(padded.shape[1], real=True))
    spectrum = fft.rfft2(planes, s=shape) * fft.rfft2(kernel[::-1, ::-1].astype(np.float32), s=shape)
    full = fft.irfft2(spectrum, s=shape)
    # 'valid' part of the linear convolution: output pixel (i, j) sits at (i + kh - 1, j + kw - 1)
    valid = full[..., kh - 1 : kh - 1 + x.shape[0], kw - 1 : kw - 1 + x.shape[1]]
    out = valid if x.ndim == 2 else np.moveaxis(valid, 0, -1)
    return out.astype(np.float32, copy=False)


def gaussian_kernel_1d(size: int, sigma: float) -> np.ndarray:
    """cv2.getGaussianKernel: `size` taps, normalised to sum 1."""
    t = np.arange(size) - (size - 1) / 2
    k = np.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """ImageNet-C's defocus kernel: an aliased disk of `radius`, normalised, then anti-aliased.

    The reference draws the disk on a grid of half-width max(8, radius) and smooths it with a
    3x3 (radius <= 8) or 5x5 Gaussian of sigma `alias_blur` (cv2.GaussianBlur, reflect-101 borders).
    We use an integer, centred grid of half-width max(8, ceil(radius)).
    """
    half = max(8, int(math.ceil(radius)))
    t = np.arange(-half, half + 1, dtype=np.float32)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius**2).astype(np.float32)
    disk /= disk.sum()
    taps = 3 if radius <= 8 else 5
    g = gaussian_kernel_1d(taps, alias_blur)
    disk = ndimage.correlate1d(disk, g, axis=0, mode="mirror")
    return ndimage.correlate1d(disk, g, axis=1, mode="mirror")


def motion_kernel(radius: int, sigma: float, angle_deg: float) -> tuple[np.ndarray, tuple[int, int]]:
    """ImageMagick's MotionBlurImage kernel as a 2-D correlation kernel and its anchor (row, col).

    A one-sided line of width 2*radius+1 taps along `angle_deg` (0 = +x, y pointing down), tap i
    weighted exp(-i^2 / 2 sigma^2) and normalised; tap i reads the pixel i steps ahead along the line,
    rounded to the grid as in imagecorruptions' numpy port (ceil(i * t - 0.5)). The kernel is cropped
    to the line's bounding box (a quarter of the centred square), which keeps the FFTs small.
    """
    width = 2 * radius + 1
    taps = np.arange(width)
    weights = np.exp(-(taps**2) / (2.0 * sigma**2))
    weights /= weights.sum()
    angle = np.deg2rad(angle_deg)
    dy = np.ceil(taps * np.sin(angle) - 0.5).astype(int)
    dx = np.ceil(taps * np.cos(angle) - 0.5).astype(int)
    kernel = np.zeros((dy.max() - dy.min() + 1, dx.max() - dx.min() + 1), dtype=np.float32)
    np.add.at(kernel, (dy - dy.min(), dx - dx.min()), weights.astype(np.float32))
    return kernel, (int(-dy.min()), int(-dx.min()))


def line_blur(x: np.ndarray, radius: int, sigma: float, angle_deg: float) -> np.ndarray:
    """Blur along a line (edges replicated, like the reference's `shift` helper)."""
    kernel, anchor = motion_kernel(radius, sigma, angle_deg)
    return correlate(x, kernel, pad_mode="edge", anchor=anchor)


def resize_plane(plane: np.ndarray, size_hw: tuple[int, int], box: tuple[float, float, float, float] | None = None,
                 resample: Image.Resampling = Image.Resampling.BILINEAR) -> np.ndarray:
    """Resize one float32 plane with PIL (mode 'F'); `box` = (left, top, right, bottom) source region."""
    im = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F")
    return np.array(im.resize((size_hw[1], size_hw[0]), resample, box=box), dtype=np.float32)


def center_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Magnify the centre of an (H, W[, C]) float image by `factor`, keeping its size.

    This is the reference `clipped_zoom` (crop the centre 1/factor, scipy.ndimage.zoom order 1, trim),
    done in one bilinear PIL resize of the exact centre box, which is several times faster.
    """
    h, w = x.shape[:2]
    ch, cw = h / factor, w / factor
    box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
    if x.ndim == 2:
        return resize_plane(x, (h, w), box)
    return np.stack([resize_plane(x[..., c], (h, w), box) for c in range(x.shape[2])], axis=-1)


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 2 ** (n - 1).bit_length()


def plasma_fractal(mapsize: int, wibbledecay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square height map in [0, 1], side `mapsize` (a power of two), as in ImageNet-C's fog.

    Faithful to the reference (a modification of FLHerne/mapgen's diamondsquare.py), including its
    quirk that the random offset of each level is wibble * U(-wibble, wibble), i.e. amplitude wibble^2.
    """
    if mapsize & (mapsize - 1):
        raise ValueError(f"mapsize must be a power of two, got {mapsize}")
    grid = np.empty((mapsize, mapsize), dtype=np.float64)
    grid[0, 0] = 0.0
    step = mapsize
    wibble = 100.0
    while step >= 2:
        half = step // 2
        # squares: each cell centre = mean of its four corners + noise
        corners = grid[0:mapsize:step, 0:mapsize:step]
        acc = corners + np.roll(corners, -1, axis=0)
        acc = acc + np.roll(acc, -1, axis=1)
        grid[half:mapsize:step, half:mapsize:step] = acc / 4 + wibble * rng.uniform(-wibble, wibble, acc.shape)
        # diamonds: each edge midpoint = mean of its two corners and two neighbouring centres + noise
        centres = grid[half:mapsize:step, half:mapsize:step]
        corners = grid[0:mapsize:step, 0:mapsize:step]
        top = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        grid[0:mapsize:step, half:mapsize:step] = top / 4 + wibble * rng.uniform(-wibble, wibble, top.shape)
        left = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        grid[half:mapsize:step, 0:mapsize:step] = left / 4 + wibble * rng.uniform(-wibble, wibble, left.shape)
        step //= 2
        wibble /= wibbledecay
    grid -= grid.min()
    return (grid / grid.max()).astype(np.float32)


def reflect_coords(c: np.ndarray, n: int) -> np.ndarray:
    """Fold coordinates that fall up to one frame outside [0, n-1] back in, mirroring about the edge
    pixels (OpenCV BORDER_REFLECT_101); anything further out is clamped."""
    c = np.abs(c)
    return np.clip(np.where(c > n - 1, 2 * (n - 1) - c, c), 0, n - 1)


def sample_bilinear(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bilinearly sample an (H, W, C) image at float (rows, cols) arrays of shape (H', W'); mirror borders."""
    h, w, c = x.shape
    if h < 2 or w < 2:
        raise ValueError(f"bilinear sampling needs at least 2x2 pixels, got {h}x{w}")
    rows = reflect_coords(rows.astype(np.float32, copy=False), h)
    cols = reflect_coords(cols.astype(np.float32, copy=False), w)
    r0 = np.minimum(rows.astype(np.intp), h - 2)  # floor (coordinates are >= 0), keeping r0 + 1 inside
    c0 = np.minimum(cols.astype(np.intp), w - 2)
    fr = (rows - r0).ravel()
    fc = (cols - c0).ravel()
    i = (r0 * w + c0).ravel()
    out = np.empty((i.size, c), dtype=np.float32)
    for k in range(c):  # one channel at a time: 1-D takes and full-length arithmetic are fastest
        plane = np.ascontiguousarray(x[..., k]).ravel()
        a, b = plane.take(i), plane.take(i + 1)
        d, e = plane.take(i + w), plane.take(i + w + 1)
        top = a + (b - a) * fc
        bottom = d + (e - d) * fc
        out[:, k] = top + (bottom - top) * fr
    return out.reshape(*rows.shape, c)
