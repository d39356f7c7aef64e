"""Codec checkpoint = folder with `weights.safetensors` + `card.json`, like models/checkpoint.py.

The card carries the typed `CodecConfig`, the codec id (fingerprint of config + weights + integer
tables, which every bitstream repeats) and the fingerprint of the device checkpoint the codec was
trained on. Loading validates every tensor name and shape, checks the integer tables, recomputes
the codec id, and refuses a device model whose fingerprint differs from the card's.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from tandemseg.codec.config import CodecConfig
from tandemseg.codec.errors import CodecCheckpointError, CodecError
from tandemseg.codec.model import FeatureCodec
from tandemseg.digest import file_sha256
from tandemseg.jsonio import write_json
from tandemseg.models.checkpoint import git_commit, read_json_card, read_weights

CARD_VERSION = 1
KIND = "codec"
WEIGHTS = "weights.safetensors"
CARD = "card.json"


@dataclass
class CodecCheckpoint:
    codec: FeatureCodec
    card: dict
    path: Path


def _digest(state: dict[str, torch.Tensor], header: str = "", half: bool = False) -> str:
    """sha256 over a header and every tensor's name, dtype, shape and little-endian bytes, in name order."""
    h = hashlib.sha256(header.encode())
    for name in sorted(state):
        t = state[name].detach().cpu()
        if half and t.is_floating_point():
            t = t.half()
        arr = t.contiguous().numpy()
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        h.update(f"{name}|{arr.dtype.str}|{tuple(arr.shape)}|".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def device_fingerprint(device: nn.Module) -> str:
    """Fingerprint of a device model's weights as its checkpoint stores them (float16), so a model gives the
    same hash before saving and after loading: the hash a bitstream carries and a codec card pins."""
    return _digest(device.state_dict(), "device", half=True)


def codec_fingerprint(codec: FeatureCodec) -> str:
    """Fingerprint of config + weights + integer tables: two codecs that could misread each other's bytes differ."""
    return _digest(codec.state_dict(), json.dumps(codec.cfg.to_json(), sort_keys=True))


def save_codec(folder: str | Path, codec: FeatureCodec, device_hash: str, *, data: str, recipe: str,
               metrics: dict | None = None, extra: dict | None = None) -> Path:
    """Build the integer tables, then write weights (float32, tables as integers) first and the card last."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    codec.update()
    state = {k: v.detach().contiguous().cpu() for k, v in codec.state_dict().items()}
    tmp = folder / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(folder / WEIGHTS)
    codec.codec_id, codec.device_hash = codec_fingerprint(codec), device_hash
    card = {
        "format_version": CARD_VERSION, "kind": KIND, "config": codec.cfg.to_json(),
        "codec_id": codec.codec_id, "device_hash": device_hash, "parameters": codec.parameter_counts(),
        "weights_dtype": "float32", "weights_sha256": file_sha256(folder / WEIGHTS), "reparameterized": codec.is_reparameterized, "data": data, "recipe": recipe, "metrics": metrics or {},
        "commit": git_commit(), "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), **(extra or {}),
    }
    write_json(folder / CARD, card)
    return folder


def read_codec_card(folder: str | Path) -> dict:
    path = Path(folder) / CARD
    card = read_json_card(path, CodecCheckpointError, ("kind", "config", "codec_id", "device_hash"),
                          "pass a codec checkpoint folder (written by save_codec)")
    if card["kind"] != KIND:
        raise CodecCheckpointError(f"{path} is not a codec card (kind {card.get('kind')!r})")
    return card


def load_codec(folder: str | Path, device: nn.Module | None = None, device_hash: str | None = None) -> CodecCheckpoint:
    """Rebuild the codec from its card and load its weights (eval mode, CPU).

    With `device` (or its `device_hash`), refuse a codec trained on another device checkpoint."""
    folder = Path(folder)
    card = read_codec_card(folder)
    if device is not None:
        device_hash = device_fingerprint(device)
    if device_hash is not None and device_hash != card["device_hash"]:
        raise CodecCheckpointError(
            f"{folder} was trained on device checkpoint {card['device_hash'][:16]} but the device here is "
            f"{device_hash[:16]}; use the codec trained for this device (or retrain it with --device-ckpt)"
        )
    try:
        codec = FeatureCodec(CodecConfig.from_json(card["config"]))
    except (CodecError, TypeError, ValueError) as e:
        raise CodecCheckpointError(f"{folder}/{CARD}: cannot build the codec from its config ({e})") from None
    if device is not None:
        _check_split(codec.cfg, device, folder)
    if card.get("reparameterized", False):
        codec.eval().reparameterize()  # the folded topology the weights were saved in (the values come next)
    codec.load_state_dict(_read_state(folder, codec))
    _check_tables(codec, folder)
    codec.codec_id, codec.device_hash = codec_fingerprint(codec), card["device_hash"]
    if codec.codec_id != card["codec_id"]:
        raise CodecCheckpointError(f"{folder}: the weights do not match the card's codec id; copy both files from one checkpoint")
    return CodecCheckpoint(codec.eval(), card, folder)


def _read_state(folder: Path, codec: FeatureCodec) -> dict[str, torch.Tensor]:
    state = read_weights(folder, CodecCheckpointError)
    expected = codec.state_dict()
    resizable = {n for name, m in codec.named_modules() if hasattr(m, "table_names") for n in m.table_names(f"{name}." if name else "")}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CodecCheckpointError(f"{folder}: weights do not fit the card's codec (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for k, v in expected.items():
        if k not in resizable and (state[k].shape != v.shape or state[k].dtype != v.dtype):
            raise CodecCheckpointError(f"{folder}: tensor {k} is {state[k].dtype}{tuple(state[k].shape)}, the card's codec needs {v.dtype}{tuple(v.shape)}")
    return state


def _check_tables(codec: FeatureCodec, folder: Path) -> None:
    if codec.compresses and not (codec.prior.ready and codec.gaussian.ready):
        raise CodecCheckpointError(f"{folder}: the integer entropy tables are missing or inconsistent; re-save the codec")


def _check_split(cfg: CodecConfig, device: nn.Module, folder: Path) -> None:
    info = device.feature_info
    if not 0 <= cfg.split_index < len(info) or info[cfg.split_index]["num_chs"] != cfg.in_channels:
        raise CodecCheckpointError(f"{folder}: split stage {cfg.split_index} ({cfg.in_channels} channels) does not exist in this device model")
