"""The cloud's per-device state: each device's U (ACDC eq. 9), its version and counters.

One store serves both deployments: `CloudService` holds one (FastAPI, one process), and on Ray Serve a
single `DeviceStates` replica is one (cloud/ray_app.py), so DCAM stays correct however many segmenter
replicas run. Every change happens under one lock: a device's update is atomic, and two devices never
wait on each other for longer than a C x C blend.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from tandemseg.cloud.dcam import Dcam, DcamEvidence


@dataclass
class DeviceState:
    """What the cloud keeps per device: its current U (None until known), version, and counters."""

    u: np.ndarray | None
    version: int = 0
    frames: int = 0
    updates: int = 0

    def to_json(self, device_id: str) -> dict:
        """The state as the HTTP API returns it (docs/protocol.md): plain numbers and lists."""
        return {"device_id": device_id, "u_version": self.version, "frames": self.frames, "dcam_updates": self.updates,
                "u": None if self.u is None else self.u.tolist()}


class DeviceStateStore:
    """Every device's state, created on first contact from `initial_u` (None: unknown until the device PUTs its U)."""

    def __init__(self, num_classes: int, initial_u: np.ndarray | None = None, dcam: Dcam | None = None) -> None:
        self.num_classes = num_classes
        self.initial_u = None if initial_u is None else self._checked(initial_u)
        self.dcam = dcam or Dcam()
        self._devices: dict[str, DeviceState] = {}
        self._lock = threading.Lock()

    def _checked(self, u: np.ndarray) -> np.ndarray:
        """A float64 copy of `u` (the caller's array never becomes a device's state) after checking it."""
        u = np.array(u, dtype=np.float64)
        c = self.num_classes
        if u.shape != (c, c) or not np.isfinite(u).all():
            raise ValueError(f"U must be a finite ({c}, {c}) matrix, got shape {u.shape}")
        return u

    def _state(self, device_id: str) -> DeviceState:
        """Caller holds the lock."""
        if device_id not in self._devices:
            self._devices[device_id] = DeviceState(None if self.initial_u is None else self.initial_u.copy())
        return self._devices[device_id]

    def get(self, device_id: str) -> dict:
        """The device's state as JSON (created from `initial_u` if the device is new)."""
        with self._lock:
            return self._state(device_id).to_json(device_id)

    def set(self, device_id: str, u: np.ndarray, version: int = 0) -> dict:
        """Register (or reset) a device's U, e.g. when a device announces the matrix it was shipped with."""
        u = self._checked(u)
        with self._lock:
            s = self._state(device_id)
            s.u, s.version = u, int(version)
            return s.to_json(device_id)

    def record(self, device_id: str, device_u_version: int, evidence: DcamEvidence | None) -> tuple[np.ndarray | None, int]:
        """Count one upload and apply its DCAM evidence (eq. 14); (U as float32, version) to send back when
        the device's copy is older than ours, else (None, version)."""
        with self._lock:
            s = self._state(device_id)
            s.frames += 1
            if evidence is not None and s.u is not None and self.dcam.on:
                new_u, changed = self.dcam.blend(s.u, evidence)
                if changed:
                    s.u, s.version, s.updates = np.asarray(new_u, dtype=np.float64), s.version + 1, s.updates + 1
            if s.u is not None and s.version > device_u_version:
                return s.u.astype(np.float32), s.version
            return None, s.version
