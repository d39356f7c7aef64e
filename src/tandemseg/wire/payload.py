"""Payload codecs: the bytes that cross the network, encoded and decoded with PIL.

* frames: `png` (lossless), `jpeg:Q`, `webp:Q` and `avif:Q` (lossy, quality Q in 1..100), RGB uint8 (H, W, 3);
* label maps: 8-bit single-channel PNG (the cloud's fine prediction, lossless and compact);
* device probabilities (what DCAM needs, ACDC eq. 13-14): (C, h, w) in [0, 1], quantised to uint8
  (step 1/255) and zlib-compressed; unpacking returns float32 renormalised over classes.

Every byte count reported by tandemseg is `len()` of what these functions return.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tandemseg.errors import SpecError, TandemsegError

FRAME_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}
FEATURES = "features"  # an upload of JD split features: a codec/container.py bitstream, not an image


class PayloadError(TandemsegError):
    """A payload cannot be decoded (corrupt bytes, wrong shape or codec)."""


@dataclass(frozen=True)
class Codec:
    """A parsed frame codec: format name and quality (None for png)."""

    name: str
    quality: int | None = None

    def __str__(self) -> str:
        return self.name if self.quality is None else f"{self.name}:{self.quality}"


def parse_codec(text: str) -> Codec:
    """`png` | `jpeg:Q` | `webp:Q` | `avif:Q` -> Codec; raises SpecError saying what is valid."""
    name, sep, q = (text or "").strip().lower().partition(":")
    if name not in FRAME_FORMATS:
        raise SpecError(f"unknown codec {text!r}; valid: png, jpeg:Q, webp:Q, avif:Q (Q = quality 1..100, e.g. jpeg:90)")
    if name == "png":
        if sep:
            raise SpecError(f"codec png is lossless and takes no quality; write 'png', not {text!r}")
        return Codec("png")
    if not q:
        raise SpecError(f"codec {name} needs a quality: write {name}:Q with Q in 1..100 (e.g. {name}:90)")
    if not (q.isascii() and q.isdigit() and len(q) <= 3):  # int() alone would take ' 90', '+90' and '9_0'
        raise SpecError(f"codec quality must be an integer 1..100, got {q!r} in {text!r}")
    quality = int(q)
    if not 1 <= quality <= 100:
        raise SpecError(f"codec quality must be in 1..100, got {quality} in {text!r}")
    return Codec(name, quality)


def parse_upload_codec(text: str) -> str:
    """What an upload's `codec` field may say: an image codec (canonical spelling, see parse_codec) or 'features'."""
    if (text or "").strip().lower() == FEATURES:
        return FEATURES
    try:
        return str(parse_codec(text))
    except SpecError:
        raise SpecError(f"unknown codec {text!r}; valid: png, jpeg:Q, webp:Q, avif:Q (Q in 1..100) or {FEATURES}") from None


def encode_frame(image: np.ndarray, codec: str | Codec = "png") -> bytes:
    """RGB uint8 (H, W, 3) -> encoded bytes."""
    c = parse_codec(codec) if isinstance(codec, str) else codec
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise PayloadError(f"a frame must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    kwargs = {} if c.quality is None else {"quality": c.quality}
    if c.name == "png":
        # zlib level 1: on CamVid frames 13.8 ms of device CPU per frame against 45.6 ms at the default
        # level 6, for 5.6% more bytes (`tandemseg bench costs`); the device's CPU is the scarce one
        kwargs["compress_level"] = 1
    Image.fromarray(image).save(buf, format=FRAME_FORMATS[c.name], **kwargs)
    return buf.getvalue()


def decode_frame(data: bytes, codec: str | Codec | None = None) -> np.ndarray:
    """Encoded bytes -> RGB uint8 (H, W, 3). The format is sniffed; `codec`, when given, must match it."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            pixels = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # PIL raises many types for corrupt data
        raise PayloadError(f"cannot decode frame payload ({len(data)} bytes): {e}") from None
    if codec is not None:
        c = parse_codec(codec) if isinstance(codec, str) else codec
        if FRAME_FORMATS[c.name] != fmt:
            raise PayloadError(f"payload is {fmt} but the request says codec {c}")
    return pixels


def encode_label_png(label: np.ndarray) -> bytes:
    """(H, W) integer label map with values 0..255 -> 8-bit PNG bytes."""
    if label.ndim != 2:
        raise PayloadError(f"a label map must be (H, W), got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise PayloadError("label values must lie in 0..255 to fit an 8-bit PNG")
    buf = io.BytesIO()
    Image.fromarray(label.astype(np.uint8), mode="L").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_label_png(data: bytes) -> np.ndarray:
    """8-bit PNG bytes -> (H, W) int64 label map."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode not in ("L", "P"):
                raise PayloadError(f"label payload has mode {im.mode}; expected an 8-bit single-channel PNG")
            return np.asarray(im, dtype=np.int64)
    except PayloadError:
        raise
    except Exception as e:
        raise PayloadError(f"cannot decode label payload ({len(data)} bytes): {e}") from None


CLOUD_PROB_LEVELS = 15  # the cloud's reply: 4-bit probabilities (8 kB a CamVid frame at /4, against 29 kB at 8 bits)


def pack_probs(probs: np.ndarray, levels: int = 255) -> tuple[bytes, tuple[int, int, int]]:
    """(C, h, w) probabilities in [0, 1] -> (zlib(uint8 of round(p * levels)), shape). `unpack_probs` renormalises
    every pixel, so it needs no `levels`: 255 for the device's upload (DCAM), CLOUD_PROB_LEVELS for the reply."""
    if probs.ndim != 3:
        raise PayloadError(f"probabilities must be (C, h, w), got shape {probs.shape}")
    if not 1 <= levels <= 255:
        raise PayloadError(f"levels must be in 1..255, got {levels}")
    q = np.clip(np.rint(np.asarray(probs, dtype=np.float32) * levels), 0, levels).astype(np.uint8)  # (C, h, w)
    return zlib.compress(q.tobytes(), 9 if levels < 255 else 6), tuple(int(s) for s in probs.shape)


def unpack_probs(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """Inverse of pack_probs: float32 (C, h, w), renormalised so each pixel sums to 1 (quantisation drift)."""
    try:
        raw = zlib.decompress(data)
    except zlib.error as e:
        raise PayloadError(f"the probabilities payload is not zlib data: {e}") from None
    c, h, w = (int(s) for s in shape)
    if len(raw) != c * h * w:
        raise PayloadError(f"the probabilities hold {len(raw)} values but their shape {tuple(shape)} needs {c * h * w}")
    p = np.frombuffer(raw, dtype=np.uint8).reshape(c, h, w).astype(np.float32) / 255.0  # (C, h, w)
    return p / np.maximum(p.sum(0, keepdims=True), 1e-6)
