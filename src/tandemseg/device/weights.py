"""The device's side of CEMA's weight push: check an update, swap it in between frames, keep the previous weights,
and roll back when the update is corrupt or the device's own entropy jumps after it.

Rollback rule (a reading: the issue asks for "entropy jumps past a bound"): the mean frame entropy of the
`watch` frames after an update is compared with the mean of the `watch` frames before it; above
`rollback_factor` times that, the previous tensors are restored bit for bit and the version is kept as refused
(a later, newer update is still accepted).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from tandemseg.models.adaptation import adapted_state_names
from tandemseg.wire.weights import UpdateError, UpdateMessage, decode_update, state_hash


@dataclass
class UpdateStats:
    applied: int = 0
    rejected: int = 0
    rolled_back: int = 0
    bytes_down: int = 0
    last_error: str | None = None
    events: list[dict] = field(default_factory=list)


class WeightUpdater:
    def __init__(self, model: nn.Module, device_id: str, params: str = "norm", watch: int = 8, rollback_factor: float = 1.5,
                 max_events: int = 256) -> None:
        self.model, self.device_id = model, device_id
        self.base_hash = state_hash(model.state_dict())
        self.allowed = frozenset(adapted_state_names(model, params))
        self.version = 0
        self.watch, self.rollback_factor = watch, rollback_factor
        self.stats = UpdateStats()
        self._max_events = max_events
        self._recent: deque[float] = deque(maxlen=watch)  # entropies before the pending check
        self._previous: dict[str, torch.Tensor] | None = None
        self._before: float | None = None
        self._after: list[float] = []

    def offer(self, message: UpdateMessage, frame_id: int = -1) -> bool:
        """Check and apply `message`; False (weights untouched) when it is refused."""
        self.stats.bytes_down += message.bytes_down
        if message.version <= self.version:
            return self._refuse(frame_id, f"version {message.version} is not newer than {self.version}")
        state = self.model.state_dict()
        try:
            update = decode_update(message, self.device_id, self.base_hash, state, self.allowed)
        except UpdateError as e:
            return self._refuse(frame_id, str(e))
        self._previous = {k: state[k].detach().clone() for k in update.tensors}
        with torch.no_grad():
            for k, t in update.tensors.items():
                state[k].copy_(t)
        self.version = update.version
        self._before = float(np.mean(self._recent)) if self._recent else None
        self._after = []
        self.stats.applied += 1
        self._event(frame_id, "applied", version=update.version, bytes=message.bytes_down)
        return True

    def observe(self, entropy: float, frame_id: int = -1) -> bool:
        """The device's mean frame entropy under the weights in force; True when this triggered a rollback."""
        if self._previous is None or self._before is None:
            self._recent.append(entropy)
            return False
        self._after.append(entropy)
        if len(self._after) < self.watch:
            return False
        after = float(np.mean(self._after))
        if after > self.rollback_factor * self._before:
            self.rollback(frame_id, f"entropy {after:.3f} after the update vs {self._before:.3f} before")
            return True
        self._previous, self._recent = None, deque(self._after, maxlen=self.watch)
        return False

    def rollback(self, frame_id: int = -1, why: str = "asked") -> None:
        """Restore the tensors the last update replaced (bit for bit)."""
        if self._previous is None:
            return
        state = self.model.state_dict()
        with torch.no_grad():
            for k, t in self._previous.items():
                state[k].copy_(t)
        self._previous, self._before = None, None
        self.stats.rolled_back += 1
        self._event(frame_id, "rolled_back", why=why)

    def _refuse(self, frame_id: int, why: str) -> bool:
        self.stats.rejected += 1
        self.stats.last_error = why
        self._event(frame_id, "rejected", why=why)
        return False

    def _event(self, frame_id: int, kind: str, **info) -> None:
        if len(self.stats.events) < self._max_events:
            self.stats.events.append({"frame": frame_id, "event": kind, **info})
