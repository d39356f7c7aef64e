"""The cloud service as plain methods (no HTTP): decode uploads, segment them in one batched forward per
frame size, encode the fine predictions, and run DCAM (ACDC eq. 13-14) per device.

The HTTP layer (cloud/app.py) and the request batcher call `segment_batch` from worker threads; the
in-process link (device/link.py) calls it directly. Per-device state (U and its version) is guarded by a
lock, and each device's update is applied atomically.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tandemseg.cloud.dcam import dcam_update
from tandemseg.data.classes import ClassTable
from tandemseg.eval.evaluate import to_tensor
from tandemseg.wire.messages import PROTOCOL_VERSION, CloudReply, UploadRequest
from tandemseg.wire.payload import PayloadError, decode_frame, encode_label_png, unpack_probs


@dataclass
class DeviceState:
    """What the cloud keeps per device: its current U (None until known), version, and counters."""

    u: np.ndarray | None
    version: int = 0
    frames: int = 0
    updates: int = 0


class CloudService:
    def __init__(self, model: nn.Module, classes: ClassTable, dcam_alpha: float = 0.0, initial_u: np.ndarray | None = None) -> None:
        if not 0.0 <= dcam_alpha <= 1.0:
            raise ValueError(f"dcam_alpha must be in [0, 1] (eq. 14), got {dcam_alpha}")
        self.model = model.eval()
        self.classes = classes
        self.dcam_alpha = dcam_alpha
        self.initial_u = None if initial_u is None else np.asarray(initial_u, dtype=np.float64)
        self._devices: dict[str, DeviceState] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ per-device state

    def _state(self, device_id: str) -> DeviceState:
        """Caller holds the lock."""
        if device_id not in self._devices:
            u = None if self.initial_u is None else self.initial_u.copy()
            self._devices[device_id] = DeviceState(u)
        return self._devices[device_id]

    def device_state(self, device_id: str) -> dict:
        with self._lock:
            s = self._state(device_id)
            return {"device_id": device_id, "u_version": s.version, "frames": s.frames, "dcam_updates": s.updates,
                    "u": None if s.u is None else s.u.tolist()}

    def set_uncertainty(self, device_id: str, u: np.ndarray, version: int = 0) -> None:
        """Register (or reset) a device's U, e.g. when a device announces the matrix it was shipped with."""
        u = np.asarray(u, dtype=np.float64)
        c = self.classes.num_classes
        if u.shape != (c, c) or not np.isfinite(u).all():
            raise ValueError(f"U must be a finite ({c}, {c}) matrix, got shape {u.shape}")
        with self._lock:
            s = self._state(device_id)
            s.u, s.version = u.copy(), int(version)

    # ------------------------------------------------------------------ segmentation

    def segment_batch(self, requests: list[UploadRequest]) -> list[CloudReply]:
        """Decode, segment (one forward per distinct frame size), encode; DCAM per device when enabled."""
        frames = [self._decode(r) for r in requests]
        preds: list[np.ndarray | None] = [None] * len(requests)
        cloud_ms = [0.0] * len(requests)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, f in enumerate(frames):
            groups.setdefault(f.shape[:2], []).append(i)
        for idx in groups.values():
            t0 = time.perf_counter()
            with torch.inference_mode():
                logits = self.model(to_tensor([frames[i] for i in idx]))  # (n, C, H, W)
                labels = logits.argmax(1).to(torch.uint8).numpy()  # (n, H, W)
            ms = (time.perf_counter() - t0) * 1e3 / len(idx)  # the batch's compute shared equally
            for j, i in enumerate(idx):
                preds[i], cloud_ms[i] = labels[j], ms
        return [self._reply(r, p, ms) for r, p, ms in zip(requests, preds, cloud_ms, strict=True)]

    def _decode(self, r: UploadRequest) -> np.ndarray:
        if r.protocol_version != PROTOCOL_VERSION:
            raise PayloadError(f"frame {r.frame_id} from {r.device_id} speaks protocol {r.protocol_version}; this cloud speaks {PROTOCOL_VERSION}")
        frame = decode_frame(r.payload, r.codec)
        if frame.shape[:2] != (r.height, r.width):
            raise PayloadError(f"frame {r.frame_id}: payload decodes to {frame.shape[1]}x{frame.shape[0]} but the request says {r.width}x{r.height}")
        return frame

    def _reply(self, r: UploadRequest, pred: np.ndarray, ms: float) -> CloudReply:
        reply = CloudReply(r.device_id, r.frame_id, encode_label_png(pred), cloud_ms=ms)
        u, version = self._dcam(r, pred)
        if u is not None:
            reply.u_matrix, reply.u_version = u.astype(np.float32), version
        return reply

    def _dcam(self, r: UploadRequest, pred: np.ndarray) -> tuple[np.ndarray | None, int]:
        """Eq. 13-14 for one upload; returns (U, version) to send when the device's copy is stale, else (None, v)."""
        probs = None
        if self.dcam_alpha > 0 and r.device_probs is not None and r.device_probs_shape is not None:
            probs = unpack_probs(r.device_probs, r.device_probs_shape)  # (C, h, w)
        with self._lock:
            s = self._state(r.device_id)
            s.frames += 1
            if probs is not None and s.u is not None:
                new_u, changed = dcam_update(s.u, probs, pred, self.dcam_alpha, ignore_index=self.classes.ignore_index)
                if changed:
                    s.u, s.version, s.updates = np.asarray(new_u, dtype=np.float64), s.version + 1, s.updates + 1
            if s.u is not None and s.version > r.u_version:
                return s.u.copy(), s.version
            return None, s.version
