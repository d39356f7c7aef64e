"""How UploadRequest and CloudReply travel over HTTP: one place, shared by the server and the device client.

Request  `POST /v1/segment`, `Content-Type: application/octet-stream`
    body    = encoded frame bytes (PNG/JPEG/WebP) ++ device_probs bytes (uint8, zlib; may be empty)
    headers = X-Tandemseg-Protocol: 1            X-Tandemseg-Frame: 17
              X-Tandemseg-Codec: png | jpeg:Q | webp:Q
              X-Tandemseg-Size: HxW              (full-resolution size the cloud predicts at)
              X-Tandemseg-Image-Bytes: N         (the first N body bytes are the frame)
              X-Tandemseg-Probs-Shape: CxhxW     (present iff device_probs follow the frame)
              X-Tandemseg-U-Version: 3           (the U version the device holds)
              X-Tandemseg-Device: dev1           (optional; must equal the token's device)
              X-Tandemseg-Reply-Probs: 1         (optional; the reply carries the cloud's probabilities, for CFE)
              Authorization: Bearer TOKEN
Reply    200, `Content-Type: application/octet-stream`
    body    = label PNG ++ cloud probs (uint8, zlib; iff asked) ++ U as little-endian float32 C*C (iff DCAM changed U)
    headers = X-Tandemseg-Frame, X-Tandemseg-Label-Bytes: N, X-Tandemseg-U-Shape: CxC (iff U follows),
              X-Tandemseg-Cloud-Probs-Shape: CxhxW and X-Tandemseg-Cloud-Probs-Bytes: M (iff probs follow),
              X-Tandemseg-U-Version, X-Tandemseg-Cloud-Ms
Errors   4xx/5xx with `{"error": "..."}` (application/json).

Raw bytes with a length header keep the upload compact (no base64, no multipart parser) and bytes_up
equal to UploadRequest.bytes_up; see docs/protocol.md.
"""

from __future__ import annotations

import io
import math
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from tandemseg.codec.container import unpack
from tandemseg.codec.errors import BitstreamError
from tandemseg.errors import SpecError, TandemsegError
from tandemseg.wire import payload
from tandemseg.wire.messages import PROTOCOL_VERSION, CloudReply, UploadRequest

H_PROTOCOL = "X-Tandemseg-Protocol"
H_DEVICE = "X-Tandemseg-Device"
H_FRAME = "X-Tandemseg-Frame"
H_CODEC = "X-Tandemseg-Codec"
H_SIZE = "X-Tandemseg-Size"
H_IMAGE_BYTES = "X-Tandemseg-Image-Bytes"
H_PROBS_SHAPE = "X-Tandemseg-Probs-Shape"
H_U_VERSION = "X-Tandemseg-U-Version"
H_REPLY_PROBS = "X-Tandemseg-Reply-Probs"
H_CLOUD_PROBS_SHAPE = "X-Tandemseg-Cloud-Probs-Shape"
H_CLOUD_PROBS_BYTES = "X-Tandemseg-Cloud-Probs-Bytes"
MAX_U_VERSION = 2**53 - 1  # exact in every JSON reader, and far from overflowing when the cloud counts on
H_LABEL_BYTES = "X-Tandemseg-Label-Bytes"
H_U_SHAPE = "X-Tandemseg-U-Shape"
H_CLOUD_MS = "X-Tandemseg-Cloud-Ms"
H_MODEL_VERSION = "X-Tandemseg-Model-Version"
H_SHA256 = "X-Tandemseg-SHA256"
OCTET = "application/octet-stream"
SEGMENT_PATH = "/v1/segment"

_MAX_INT = 2**63 - 1
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class WireError(TandemsegError):
    """A message that does not follow the protocol; `status` is the HTTP status the server answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class WireLimits:
    """What the server accepts; a request beyond these is refused before any decoding work."""

    max_body_bytes: int = 8 * 1024 * 1024
    max_side: int = 4096  # pixels per image side
    max_pixels: int = 4096 * 3072
    max_classes: int = 256


# ---------------------------------------------------------------- header parsing helpers


def _header(headers: Mapping[str, str], name: str, required: bool = True) -> str | None:
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    if value is None and required:
        raise WireError(f"missing header {name}; see docs/protocol.md for the request format")
    return value


def parse_int(value: str, name: str, lo: int = 0, hi: int = _MAX_INT) -> int:
    """A decimal integer in [lo, hi]; anything else (NaN, floats, signs, huge numbers) is a 400."""
    text = value.strip()
    if not re.fullmatch(r"\d{1,19}", text):
        raise WireError(f"{name} must be a non-negative decimal integer, got {value[:40]!r}")
    number = int(text)
    if not lo <= number <= hi:
        raise WireError(f"{name} = {number} is outside [{lo}, {hi}]")
    return number


def parse_dims(value: str, name: str, ndim: int, hi: int = 1 << 20) -> tuple[int, ...]:
    """'AxB' / 'AxBxC' of positive integers."""
    parts = value.strip().lower().split("x")
    if len(parts) != ndim:
        raise WireError(f"{name} must be {'x'.join('N' * ndim)} ({ndim} positive integers), got {value[:40]!r}")
    return tuple(parse_int(p, name, 1, hi) for p in parts)


def parse_codec(value: str) -> str:
    """The codec header in its canonical spelling (`png` | `jpeg:Q` | `webp:Q` | `features`), by wire.payload's parser."""
    try:
        return payload.parse_upload_codec(value)
    except SpecError:
        raise WireError(f"{H_CODEC} must be png, jpeg:Q, webp:Q or avif:Q with Q in 1..100, or features; got {value[:40]!r}") from None


def parse_bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


# ---------------------------------------------------------------- requests


def encode_request(req: UploadRequest, token: str | None = None) -> tuple[dict[str, str], bytes]:
    """UploadRequest -> (headers, body) for POST /v1/segment."""
    headers = {
        "Content-Type": OCTET,
        H_PROTOCOL: str(req.protocol_version),
        H_DEVICE: req.device_id,
        H_FRAME: str(req.frame_id),
        H_CODEC: req.codec,
        H_SIZE: f"{req.height}x{req.width}",
        H_IMAGE_BYTES: str(len(req.payload)),
        H_U_VERSION: str(req.u_version),
    }
    if req.device_probs is not None:
        if req.device_probs_shape is None:
            raise WireError("device_probs given without device_probs_shape")
        headers[H_PROBS_SHAPE] = "x".join(str(int(v)) for v in req.device_probs_shape)
    if req.reply_probs:
        headers[H_REPLY_PROBS] = "1"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers, req.payload + (req.device_probs or b"")


def decode_request(headers: Mapping[str, str], body: bytes, device_id: str, limits: WireLimits = WireLimits()) -> UploadRequest:
    """(headers, body) -> UploadRequest for the authenticated `device_id`; raises WireError on any violation.

    Checks the fields and the probabilities' decompressed size here; the image itself is checked by
    `check_image` (it costs a decode, so the server runs it off the event loop).
    """
    version = parse_int(_header(headers, H_PROTOCOL), H_PROTOCOL)
    if version != PROTOCOL_VERSION:
        raise WireError(f"protocol version {version} is not supported; this server speaks version {PROTOCOL_VERSION}")
    claimed = _header(headers, H_DEVICE, required=False)
    if claimed is not None and claimed.strip() != device_id:
        raise WireError(f"{H_DEVICE} says {claimed.strip()[:64]!r} but the token belongs to {device_id!r}; a device acts only for itself", 403)
    frame_id = parse_int(_header(headers, H_FRAME), H_FRAME)
    codec = parse_codec(_header(headers, H_CODEC))
    height, width = parse_dims(_header(headers, H_SIZE), H_SIZE, 2)
    if max(height, width) > limits.max_side or height * width > limits.max_pixels:
        raise WireError(f"frame {height}x{width} exceeds this server's limit ({limits.max_side} pixels a side, "
                        f"{limits.max_pixels} in all); downscale it on the device", 413)
    n_image = parse_int(_header(headers, H_IMAGE_BYTES), H_IMAGE_BYTES, 1, len(body)) if body else 0
    if n_image == 0:
        raise WireError("empty body: the request must carry the encoded frame")
    u_version = parse_int(_header(headers, H_U_VERSION, required=False) or "0", H_U_VERSION, hi=MAX_U_VERSION)
    probs, shape = _decode_probs_part(headers, body[n_image:], (height, width), limits)
    reply_probs = _header(headers, H_REPLY_PROBS, required=False)
    if reply_probs is not None and reply_probs.strip() not in ("0", "1"):
        raise WireError(f"{H_REPLY_PROBS} must be 0 or 1, got {reply_probs[:40]!r}")
    return UploadRequest(
        device_id=device_id, frame_id=frame_id, payload=bytes(body[:n_image]), codec=codec, height=height, width=width,
        protocol_version=version, device_probs=probs, device_probs_shape=shape, u_version=u_version,
        reply_probs=reply_probs is not None and reply_probs.strip() == "1",
    )


def _decode_probs_part(
    headers: Mapping[str, str], rest: bytes, size: tuple[int, int], limits: WireLimits
) -> tuple[bytes | None, tuple[int, int, int] | None]:
    shape_text = _header(headers, H_PROBS_SHAPE, required=False)
    if shape_text is None:
        if rest:
            raise WireError(f"{len(rest)} bytes follow the frame but {H_PROBS_SHAPE} is missing; send it with device_probs")
        return None, None
    c, h, w = parse_dims(shape_text, H_PROBS_SHAPE, 3)
    if c > limits.max_classes or h > size[0] or w > size[1]:
        raise WireError(f"{H_PROBS_SHAPE} {c}x{h}x{w} is not a coarse map of a {size[0]}x{size[1]} frame (at most {limits.max_classes} classes)")
    if not rest:
        raise WireError(f"{H_PROBS_SHAPE} is set but no device_probs bytes follow the frame")
    check_zlib_size(rest, c * h * w, H_PROBS_SHAPE)
    return bytes(rest), (c, h, w)


def check_zlib_size(data: bytes, expected: int, what: str) -> None:
    """Inflate at most expected+1 bytes (a zlib bomb cannot exhaust memory) and require exactly `expected`."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, expected + 1)
    except zlib.error as e:
        raise WireError(f"the probabilities announced by {what} are not valid zlib data ({e})") from None
    if len(out) != expected or not inflater.eof:
        raise WireError(f"the probabilities inflate to {'more than ' if len(out) > expected else ''}{len(out)} bytes but {what} needs {expected} (uint8 C*h*w)")


def check_image(req: UploadRequest, limits: WireLimits = WireLimits()) -> None:
    """Check the frame before it joins a batch: right format for its codec, right size, intact. Raises WireError.

    A PNG is verified by its chunk checksums rather than decoded (the service decodes it anyway); should a
    crafted PNG with valid checksums still fail to decode, the batcher isolates it (cloud/batching.py).
    """
    if req.codec == payload.FEATURES:
        check_features(req)
        return
    want = payload.FRAME_FORMATS[payload.parse_codec(req.codec).name]
    try:
        with Image.open(io.BytesIO(req.payload)) as im:
            if im.format != want:
                raise WireError(f"the body holds {im.format or 'unknown'} data but {H_CODEC} says {req.codec}")
            if im.size != (req.width, req.height):
                raise WireError(f"the frame is {im.size[1]}x{im.size[0]} but {H_SIZE} says {req.height}x{req.width}")
            if im.mode not in ("RGB", "RGBA", "L", "P"):
                raise WireError(f"the frame has pixel mode {im.mode}; send 8-bit RGB")
            if im.format == "PNG":
                im.verify()  # every chunk's CRC and the end marker: catches truncation and damage at ~1/40 of a decode
            else:
                im.load()  # JPEG/WebP carry no checksums: a full decode finds truncated or corrupt data
    except WireError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise WireError(f"cannot decode the frame as {req.codec}: {str(e)[:120]}") from None


def check_features(req: UploadRequest) -> None:
    """A feature upload's container: intact (length, CRC, header fields) and for this frame's size. Raises WireError.
    Whether this server's codec can decode it (codec id, device hash) is the decoder's check (a 4xx as well)."""
    try:
        stream = unpack(req.payload)
    except BitstreamError as e:
        raise WireError(f"the features payload is not a valid bitstream: {e}") from None
    if tuple(stream.frame_hw) != (req.height, req.width):
        raise WireError(f"the bitstream is for a {stream.frame_hw[0]}x{stream.frame_hw[1]} frame but {H_SIZE} says {req.height}x{req.width}")


# ---------------------------------------------------------------- replies


def encode_reply(reply: CloudReply) -> tuple[dict[str, str], bytes]:
    """CloudReply -> (headers, body); U (if changed) follows the label PNG as little-endian float32."""
    headers = {
        H_FRAME: str(reply.frame_id),
        H_LABEL_BYTES: str(len(reply.label_png)),
        H_U_VERSION: str(reply.u_version),
        H_CLOUD_MS: f"{reply.cloud_ms:.3f}",
        H_MODEL_VERSION: str(reply.model_version),
    }
    body = reply.label_png
    if reply.probs is not None:
        if reply.probs_shape is None:
            raise WireError("reply probs given without probs_shape")
        headers[H_CLOUD_PROBS_SHAPE] = "x".join(str(int(v)) for v in reply.probs_shape)
        headers[H_CLOUD_PROBS_BYTES] = str(len(reply.probs))
        body = body + reply.probs
    if reply.u_matrix is not None:
        u = np.ascontiguousarray(reply.u_matrix, dtype="<f4")
        headers[H_U_SHAPE] = f"{u.shape[0]}x{u.shape[1]}"
        body = body + u.tobytes()
    return headers, body


def decode_reply(headers: Mapping[str, str], body: bytes, frame_id: int) -> CloudReply:
    """(headers, body) of a 200 reply -> CloudReply; the device checks the cloud's answer too."""
    got_frame = parse_int(_header(headers, H_FRAME), H_FRAME)
    if got_frame != frame_id:
        raise WireError(f"reply is for frame {got_frame} but frame {frame_id} was sent")
    n_label = parse_int(_header(headers, H_LABEL_BYTES), H_LABEL_BYTES, 1, len(body)) if body else 0
    if n_label == 0:
        raise WireError("reply carries no label map")
    u_version = parse_int(_header(headers, H_U_VERSION, required=False) or "0", H_U_VERSION)
    cloud_ms = _parse_float(_header(headers, H_CLOUD_MS, required=False) or "0", H_CLOUD_MS)
    model_version = parse_int(_header(headers, H_MODEL_VERSION, required=False) or "0", H_MODEL_VERSION, hi=MAX_U_VERSION)
    u = None
    probs, (probs_shape, n_probs) = None, _reply_probs(headers, len(body) - n_label)
    if probs_shape is not None:
        probs = bytes(body[n_label:n_label + n_probs])
        check_zlib_size(probs, probs_shape[0] * probs_shape[1] * probs_shape[2], H_CLOUD_PROBS_SHAPE)
    shape_text = _header(headers, H_U_SHAPE, required=False)
    rest = body[n_label + n_probs:]
    if shape_text is not None:
        c1, c2 = parse_dims(shape_text, H_U_SHAPE, 2, 4096)
        if c1 != c2 or len(rest) != c1 * c2 * 4:
            raise WireError(f"{H_U_SHAPE} {c1}x{c2} does not match the {len(rest)} bytes after the label map")
        u = np.frombuffer(rest, dtype="<f4").reshape(c1, c2).astype(np.float32)
        if not np.isfinite(u).all():
            raise WireError("the cloud sent a U with NaN or inf entries")
    elif rest:
        raise WireError(f"{len(rest)} unexpected bytes after the label map")
    return CloudReply(frame_id=frame_id, label_png=bytes(body[:n_label]), u_matrix=u, u_version=u_version, cloud_ms=cloud_ms,
                      model_version=model_version, probs=probs, probs_shape=probs_shape)


def _reply_probs(headers: Mapping[str, str], available: int) -> tuple[tuple[int, int, int] | None, int]:
    """The cloud-probabilities part of a reply: (shape, byte count) when announced, else (None, 0)."""
    shape_text = _header(headers, H_CLOUD_PROBS_SHAPE, required=False)
    if shape_text is None:
        return None, 0
    shape = parse_dims(shape_text, H_CLOUD_PROBS_SHAPE, 3, 8192)
    n = parse_int(_header(headers, H_CLOUD_PROBS_BYTES), H_CLOUD_PROBS_BYTES, 1)
    if n > available:
        raise WireError(f"{H_CLOUD_PROBS_BYTES} = {n} but only {available} bytes follow the label map")
    return shape, n


def _parse_float(value: str, name: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise WireError(f"{name} must be a number, got {value[:40]!r}") from None
    if not math.isfinite(number) or number < 0:
        raise WireError(f"{name} must be a finite non-negative number, got {value[:40]!r}")
    return number


def decode_u_json(obj: object, num_classes: int) -> np.ndarray:
    """A JSON list of lists -> finite float64 C x C matrix (for PUT /v1/devices/{id}/state)."""
    try:
        u = np.asarray(obj, dtype=np.float64)
    except (TypeError, ValueError, OverflowError, RecursionError):
        raise WireError("u must be a C x C list of finite numbers") from None
    if u.shape != (num_classes, num_classes):
        raise WireError(f"u must be {num_classes}x{num_classes}, got shape {u.shape}")
    if not np.isfinite(u).all():
        raise WireError("u must contain only finite numbers (no NaN/inf)")
    return u  # float64: JSON carries it exactly, so the cloud starts from the device's very U
