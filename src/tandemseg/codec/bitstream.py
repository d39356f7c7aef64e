"""Frames -> container bytes on the device, container bytes -> logits in the cloud (no wire protocol here)."""

from __future__ import annotations

import torch

from tandemseg.codec.checkpoint import codec_fingerprint, device_fingerprint
from tandemseg.codec.container import FeatureBitstream, pack, unpack
from tandemseg.codec.errors import BitstreamForeign
from tandemseg.codec.model import FeatureCodec
from tandemseg.codec.pipeline import SplitCodec


def identity(codec: FeatureCodec) -> tuple[str, str]:
    """(codec id, device hash) a bitstream from this codec carries; both are set by save/load_codec."""
    if codec.device_hash is None:
        raise ValueError("the codec has no device hash; load it with load_codec or set codec.device_hash")
    return codec.codec_id or codec_fingerprint(codec), codec.device_hash


@torch.no_grad()
def encode_frames(model: SplitCodec, frames: torch.Tensor) -> list[bytes]:
    """Device side: frames (N, 3, H, W) in [0, 1] -> one container per frame."""
    if model.codec.device_hash is None:
        model.codec.device_hash = device_fingerprint(model.device)
    return encode_features(model.codec, model.features(frames), tuple(int(v) for v in frames.shape[-2:]))


@torch.no_grad()
def encode_features(codec: FeatureCodec, z: torch.Tensor, frame_hw: tuple[int, int]) -> list[bytes]:
    """Device side: split features z (N, C_z, h, w) of frames of size `frame_hw` -> one container per frame."""
    codec_id, device_hash = identity(codec)
    return [pack(c, codec_id=codec_id, device_hash=device_hash, split_index=codec.cfg.split_index, frame_hw=tuple(frame_hw))
            for c in codec.compress(z)]


@torch.no_grad()
def decode_bitstream(codec: FeatureCodec, data: bytes) -> tuple[torch.Tensor, FeatureBitstream]:
    """Cloud side: container bytes -> (logits (1, S, H, W) at the frame size, the parsed container).

    Raises a `BitstreamError` for truncated, corrupt or foreign bytes (the HTTP layer's 4xx)."""
    codec_id, device_hash = identity(codec)
    stream = unpack(data, codec_id=codec_id, device_hash=device_hash)
    if stream.split_index != codec.cfg.split_index:
        raise BitstreamForeign(f"bitstream was cut at stage {stream.split_index}, this codec decodes stage {codec.cfg.split_index}")
    r_hat, _ = codec.decompress([stream.coded])
    device = next(codec.parameters()).device
    logits = codec.decode(r_hat.to(device), stream.coded.z_shape[1:], stream.frame_hw)
    return logits, stream
