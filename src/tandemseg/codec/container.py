"""The feature bitstream container: one frame's two bitstreams with everything needed to refuse them.

Layout (version 1, little-endian, 54-byte header, CRC-32 trailer):

    0  magic        4s   b"TSFB" (tandemseg feature bitstream)
    4  version      u8   1
    5  flags        u8   0 (reserved)
    6  split index  u8   index into the device's feature_info
    7  reserved     u8   0
    8  codec id     8s   first 8 bytes of the codec checkpoint's fingerprint
   16  device hash  8s   first 8 bytes of the device checkpoint's fingerprint
   24  frame H, W   2 x u16   input frame size (bpp denominator, logits size)
   28  z shape      3 x u16   (C, H, W) of the split features
   34  r shape      3 x u16   (C, H, W) of r_hat
   40  h shape      3 x u16   (C, H, W) of h_hat
   46  len r, len h 2 x u32   byte lengths of the two bitstreams
   54  r bitstream, h bitstream
  end  crc32        u32  over every byte before it

`unpack` raises a `BitstreamError` subclass for anything else: short input (truncated), a failed
checksum or impossible field (corrupt), another magic, version, codec or device checkpoint (foreign).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from tandemseg.codec.errors import BitstreamCorrupt, BitstreamForeign, BitstreamTruncated
from tandemseg.codec.model import CodedFeatures

MAGIC = b"TSFB"
VERSION = 1
HEADER = struct.Struct("<4sBBBB8s8s2H3H3H3H2I")
CRC = struct.Struct("<I")
ID_BYTES = 8
MAX_SIDE = 8192  # no frame or feature side is larger; bigger numbers mean a damaged header
MAX_STREAM = 64 << 20  # bytes per bitstream


@dataclass(frozen=True)
class FeatureBitstream:
    codec_id: str  # 16 hex digits
    device_hash: str  # 16 hex digits
    split_index: int
    frame_hw: tuple[int, int]
    coded: CodedFeatures


def _id_bytes(hex_id: str, what: str) -> bytes:
    try:
        raw = bytes.fromhex(hex_id[: 2 * ID_BYTES])
    except (ValueError, TypeError):
        raise ValueError(f"{what} must be a hex fingerprint, got {hex_id!r}") from None
    if len(raw) != ID_BYTES:
        raise ValueError(f"{what} must have at least {2 * ID_BYTES} hex digits, got {hex_id!r}")
    return raw


def pack(coded: CodedFeatures, *, codec_id: str, device_hash: str, split_index: int, frame_hw: tuple[int, int]) -> bytes:
    """One frame's `CodedFeatures` -> container bytes."""
    sides = [*frame_hw, *coded.z_shape, *coded.r_shape, *coded.h_shape]
    if not all(0 < int(v) <= MAX_SIDE for v in sides) or not 0 <= split_index < 256:
        raise ValueError(f"shapes {sides} or split index {split_index} do not fit the container's fields")
    header = HEADER.pack(
        MAGIC, VERSION, 0, split_index, 0, _id_bytes(codec_id, "codec id"), _id_bytes(device_hash, "device hash"),
        *frame_hw, *coded.z_shape, *coded.r_shape, *coded.h_shape, len(coded.r_bytes), len(coded.h_bytes),
    )
    body = header + coded.r_bytes + coded.h_bytes
    return body + CRC.pack(zlib.crc32(body))


def _check_frame(data: bytes) -> tuple:
    """Magic, version, length and checksum -> the header fields (nothing past here can fail on size)."""
    if data[: len(MAGIC)] != MAGIC[: len(data)]:
        raise BitstreamForeign(f"not a tandemseg feature bitstream (starts with {bytes(data[:4])!r}, expected {MAGIC!r})")
    if len(data) < HEADER.size + CRC.size:
        raise BitstreamTruncated(f"feature bitstream of {len(data)} bytes is shorter than its {HEADER.size + CRC.size}-byte frame")
    fields = HEADER.unpack_from(data)
    if fields[1] != VERSION:
        raise BitstreamForeign(f"feature bitstream version {fields[1]} is not supported (this build reads version {VERSION})")
    len_r, len_h = fields[-2:]
    expected = HEADER.size + len_r + len_h + CRC.size
    if len_r > MAX_STREAM or len_h > MAX_STREAM:
        raise BitstreamCorrupt(f"bitstream lengths {len_r}, {len_h} are beyond any frame's; the header is damaged")
    if len(data) < expected:
        raise BitstreamTruncated(f"feature bitstream has {len(data)} bytes but its header announces {expected}")
    if len(data) > expected:
        raise BitstreamCorrupt(f"feature bitstream has {len(data) - expected} bytes after its end")
    (crc,) = CRC.unpack_from(data, expected - CRC.size)
    if zlib.crc32(data[: expected - CRC.size]) != crc:
        raise BitstreamCorrupt("feature bitstream checksum mismatch: the bytes were damaged in transit")
    return fields


def unpack(data: bytes, *, codec_id: str | None = None, device_hash: str | None = None) -> FeatureBitstream:
    """Container bytes -> `FeatureBitstream`; refuses a codec id or device hash other than the given ones."""
    data = bytes(data)
    fields = _check_frame(data)
    _, _, flags, split_index, reserved, cid, dhash = fields[:7]
    frame_hw, z_shape, r_shape, h_shape = fields[7:9], fields[9:12], fields[12:15], fields[15:18]
    len_r, len_h = fields[18:20]
    if flags or reserved:
        raise BitstreamCorrupt(f"reserved header fields are set (flags {flags}, reserved {reserved})")
    if not all(0 < v <= MAX_SIDE for v in (*frame_hw, *z_shape, *r_shape, *h_shape)):
        raise BitstreamCorrupt(f"impossible shapes in the header: frame {frame_hw}, z {z_shape}, r {r_shape}, h {h_shape}")
    if codec_id is not None and cid != _id_bytes(codec_id, "codec id"):
        raise BitstreamForeign(f"bitstream comes from codec {cid.hex()}, this server decodes codec {codec_id[:16]}")
    if device_hash is not None and dhash != _id_bytes(device_hash, "device hash"):
        raise BitstreamForeign(f"bitstream was encoded by device checkpoint {dhash.hex()}, this codec was trained on {device_hash[:16]}")
    start = HEADER.size
    coded = CodedFeatures(data[start:start + len_r], data[start + len_r:start + len_r + len_h], z_shape, r_shape, h_shape)
    return FeatureBitstream(cid.hex(), dhash.hex(), split_index, tuple(frame_hw), coded)
