"""Weight updates on the wire (CEMA's download direction): the adapted tensors of a device model as safetensors
bytes, with who they are for, which base they apply to, and a checksum.

An update is a *delta against a base checkpoint*: only the tensors the cloud adapts (by default the
normalisation layers' affine parameters and statistics), never the whole model. The device accepts it only
if every check below passes; otherwise it keeps the weights it has (device/weights.py).

    payload    safetensors bytes; metadata: format, device_id, version, base_hash
    sha256     hex digest of the payload, carried next to it (HTTP header X-Tandemseg-SHA256)
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from tandemseg.errors import TandemsegError

UPDATE_FORMAT = "tandemseg-weights/1"
MAX_UPDATE_BYTES = 64 * 1024 * 1024  # a delta of normalisation layers is kilobytes; anything near this is not one


class UpdateError(TandemsegError):
    """A weight update that must not be applied (corrupt, foreign, for another base or another model)."""


@dataclass
class UpdateMessage:
    """What crosses the wire: the bytes and their digest."""

    payload: bytes
    sha256: str
    version: int

    @property
    def bytes_down(self) -> int:
        return len(self.payload)


@dataclass
class WeightUpdate:
    """A decoded, checked update."""

    device_id: str
    version: int
    base_hash: str
    tensors: dict[str, torch.Tensor]


def state_hash(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of a state dict, in name order: the identity of a base model."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def encode_update(device_id: str, version: int, base_hash: str, tensors: Mapping[str, torch.Tensor]) -> UpdateMessage:
    """Serialise the adapted tensors (copied, contiguous) for `device_id`."""
    meta = {"format": UPDATE_FORMAT, "device_id": device_id, "version": str(int(version)), "base_hash": base_hash}
    payload = save_safetensors({k: v.detach().contiguous().clone() for k, v in tensors.items()}, metadata=meta)
    return UpdateMessage(payload, hashlib.sha256(payload).hexdigest(), int(version))


def decode_update(message: UpdateMessage, device_id: str, base_hash: str, reference: Mapping[str, torch.Tensor],
                  allowed: frozenset[str] | None = None) -> WeightUpdate:
    """Check and decode an update for the model whose state is `reference` (names, shapes, dtypes must match;
    `allowed`, when given, bounds which names may change). Raises UpdateError saying what is wrong."""
    if not isinstance(message.payload, bytes | bytearray) or len(message.payload) > MAX_UPDATE_BYTES:
        raise UpdateError(f"a weight update must be at most {MAX_UPDATE_BYTES} bytes")
    if hashlib.sha256(message.payload).hexdigest() != str(message.sha256).lower():
        raise UpdateError("the update's sha256 does not match its bytes (damaged or tampered in transit); the device keeps its weights")
    try:
        tensors = load_safetensors(bytes(message.payload))
        meta = _metadata(bytes(message.payload))
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise UpdateError(f"the update is not a readable safetensors file ({e})") from None
    if meta.get("format") != UPDATE_FORMAT:
        raise UpdateError(f"unknown update format {meta.get('format')!r}; this device reads {UPDATE_FORMAT}")
    if meta.get("device_id") != device_id:
        raise UpdateError(f"the update is for device {meta.get('device_id')!r}, not {device_id!r}")
    if meta.get("base_hash") != base_hash:
        raise UpdateError("the update was made for another base checkpoint than the one this device runs "
                          f"(update base {str(meta.get('base_hash'))[:12]}..., device base {base_hash[:12]}...)")
    try:
        version = int(meta.get("version", ""))
    except ValueError:
        raise UpdateError(f"the update's version {meta.get('version')!r} is not an integer") from None
    if version != message.version:
        raise UpdateError(f"the update says version {version} but was announced as {message.version}")
    for name, t in tensors.items():
        ref = reference.get(name)
        if ref is None or (allowed is not None and name not in allowed):
            raise UpdateError(f"the update changes {name!r}, which this model does not adapt")
        if tuple(t.shape) != tuple(ref.shape) or t.dtype != ref.dtype:
            raise UpdateError(f"{name}: the update has {t.dtype} {tuple(t.shape)}, the model {ref.dtype} {tuple(ref.shape)}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise UpdateError(f"{name}: the update holds non-finite values")
    return WeightUpdate(device_id, version, base_hash, tensors)


def _metadata(payload: bytes) -> dict[str, str]:
    """The safetensors header's __metadata__ (safetensors.torch.load drops it)."""
    (n,) = struct.unpack("<Q", payload[:8])
    header = json.loads(payload[8:8 + n])
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError("__metadata__ is not a mapping")
    return {str(k): str(v) for k, v in meta.items()}
