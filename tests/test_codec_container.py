"""Feature bitstream container and codec checkpoints: every malformed, truncated, corrupted or foreign
input is refused with a `BitstreamError` / `CodecCheckpointError` (both TandemsegErrors), never an
IndexError or struct.error."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tandemseg.codec import (
    BitstreamCorrupt,
    BitstreamError,
    BitstreamForeign,
    BitstreamTruncated,
    CodecCheckpointError,
    CodecConfig,
    FeatureCodec,
    SplitCodec,
    decode_bitstream,
    device_fingerprint,
    encode_frames,
    load_codec,
    pack,
    resolve_config,
    save_codec,
    unpack,
)
from tandemseg.codec.container import HEADER
from tandemseg.errors import TandemsegError
from tandemseg.models.registry import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

DEVICE_TINY = {
    "encoder": "mobilenetv2",
    "stages": [["stage1", 2, 8, 1, 2, 1], ["stage2", 2, 8, 1, 2, 1], ["stage3", 2, 16, 1, 2, 1], ["stage4", 2, 16, 1, 1, 2]],
    "head_channels": 16, "skip_channels": 8, "stem_channels": 8,
}
CODEC_TINY = {"se_channels": 16, "latent_channels": 8, "hyper_channels": 8, "aspp_channels": 8,
              "up_channels": 8, "task_channels": 8, "K": 1, "dilations": (1, 2, 3)}


def tiny_device(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("device", DEVICE_TINY).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[SplitCodec, Path, bytes]:
    """A saved codec for the tiny device, and one frame's container."""
    device = tiny_device()
    cfg = resolve_config(CodecConfig(split="stage2", **CODEC_TINY), device.feature_info)
    torch.manual_seed(1)
    model = SplitCodec(device, FeatureCodec(cfg)).eval()
    with torch.no_grad():
        model.codec.se.net[-1].weight.mul_(50.0)  # non-zero symbols in both streams
    folder = save_codec(tmp_path_factory.mktemp("codec") / "c", model.codec, device_fingerprint(device), data="none", recipe="test")
    data = encode_frames(model, torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0)))[0]
    return model, folder, data


def test_round_trip_through_the_container(saved) -> None:
    model, _, data = saved
    stream = unpack(data, codec_id=model.codec.codec_id, device_hash=model.codec.device_hash)
    assert stream.split_index == 2 and stream.frame_hw == (64, 96)
    assert pack(stream.coded, codec_id=stream.codec_id, device_hash=stream.device_hash, split_index=2, frame_hw=(64, 96)) == data
    logits, _ = decode_bitstream(model.codec, data)
    assert logits.shape == (1, 11, 64, 96)


def test_every_truncation_is_refused_as_truncated(saved) -> None:
    _, _, data = saved
    for cut in range(len(data)):
        with pytest.raises(BitstreamTruncated):
            unpack(data[:cut])


def test_every_single_byte_corruption_is_refused(saved) -> None:
    model, _, data = saved
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x5A
        with pytest.raises(BitstreamError):
            decode_bitstream(model.codec, bytes(bad))


def test_trailing_bytes_and_crc_are_reported_as_corrupt(saved) -> None:
    _, _, data = saved
    with pytest.raises(BitstreamCorrupt, match="after its end"):
        unpack(data + b"\0")
    bad = bytearray(data)
    bad[HEADER.size] ^= 1
    with pytest.raises(BitstreamCorrupt, match="checksum"):
        unpack(bytes(bad))


def resealed(data: bytes, offset: int, fmt: str, value) -> bytes:
    """`data` with one header field replaced and a valid CRC: damage the checksum cannot see."""
    body = bytearray(data[:-4])
    struct.pack_into(fmt, body, offset, value)
    return bytes(body) + struct.pack("<I", zlib.crc32(body))


def test_foreign_codec_device_split_magic_and_version_are_refused(saved) -> None:
    model, _, data = saved
    with pytest.raises(BitstreamForeign, match="codec"):
        unpack(data, codec_id="00" * 8)
    with pytest.raises(BitstreamForeign, match="device checkpoint"):
        unpack(data, device_hash="11" * 8)
    with pytest.raises(BitstreamForeign, match="stage"):
        decode_bitstream(model.codec, resealed(data, 6, "<B", 3))
    with pytest.raises(BitstreamForeign, match="not a tandemseg"):
        unpack(b"\x89PNG\r\n\x1a\n" + data[8:])
    with pytest.raises(BitstreamForeign, match="version"):
        unpack(resealed(data, 4, "<B", 2))


def test_resealed_impossible_shapes_are_refused(saved) -> None:
    model, _, data = saved
    with pytest.raises(BitstreamCorrupt, match="latent shapes"):
        decode_bitstream(model.codec, resealed(data, 34, "<H", 9))  # r channels
    with pytest.raises(BitstreamCorrupt, match="impossible"):
        decode_bitstream(model.codec, resealed(data, 24, "<H", 0))  # frame height
    huge = data
    for offset, value in [(30, 8192), (32, 8192), (36, 4096), (38, 4096), (42, 2048), (44, 2048)]:  # z, r, h H and W
        huge = resealed(huge, offset, "<H", value)
    with pytest.raises(BitstreamCorrupt, match="larger than any frame"):
        decode_bitstream(model.codec, huge)


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_is_refused_with_a_tandemseg_error(garbage: bytes) -> None:
    with pytest.raises(BitstreamError):
        unpack(garbage)
    with pytest.raises(BitstreamError):
        unpack(b"TSFB" + garbage)


def test_errors_are_tandemseg_errors() -> None:
    assert issubclass(BitstreamError, TandemsegError) and issubclass(CodecCheckpointError, TandemsegError)


# --- checkpoints ------------------------------------------------------------------------------

def test_device_fingerprint_survives_the_float16_checkpoint(saved) -> None:
    model, _, _ = saved
    twin = tiny_device()
    twin.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in model.device.state_dict().items()})
    assert device_fingerprint(twin) == device_fingerprint(model.device)
    assert device_fingerprint(tiny_device(seed=7)) != device_fingerprint(model.device)


def test_load_refuses_another_device_checkpoint(saved) -> None:
    model, folder, _ = saved
    assert load_codec(folder, device=model.device).codec.codec_id == model.codec.codec_id
    with pytest.raises(CodecCheckpointError, match="trained on device checkpoint"):
        load_codec(folder, device=tiny_device(seed=7))


def test_load_refuses_tampered_truncated_or_missing_files(saved, tmp_path: Path) -> None:
    _, folder, _ = saved
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "card.json").write_bytes((folder / "card.json").read_bytes())
    weights = (folder / "weights.safetensors").read_bytes()
    (copy / "weights.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(CodecCheckpointError, match="corrupt or truncated"):
        load_codec(copy)
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "weights.safetensors"))
    state["decoder.head.classifier.bias"] = state["decoder.head.classifier.bias"] + 1
    save_file(state, str(copy / "weights.safetensors"))
    with pytest.raises(CodecCheckpointError, match="sha256 its card records"):
        load_codec(copy)  # the card's weights digest catches the edit first
    card = json.loads((copy / "card.json").read_text())
    del card["weights_sha256"]  # without it (a card from before digests), the codec id still does
    (copy / "card.json").write_text(json.dumps(card))
    with pytest.raises(CodecCheckpointError, match="codec id"):
        load_codec(copy)
    state["decoder.head.classifier.bias"] = torch.zeros(3)
    save_file(state, str(copy / "weights.safetensors"))
    with pytest.raises(CodecCheckpointError, match="classifier.bias"):
        load_codec(copy)
    with pytest.raises(CodecCheckpointError, match="no card.json"):
        load_codec(tmp_path)
