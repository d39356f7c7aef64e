"""The adaptation side of the cloud service: uploads in, weight updates out, never in the way of a segment reply.

`submit` only queues the upload (bounded; a full queue drops the frame for adaptation and counts it, the segment
reply is unaffected). A worker thread decodes queued uploads and runs `Adapter.step` once a device has `batch`
new frames. `synchronous=True` runs the step inside `submit` instead: deterministic, for offline experiments
(the step then runs between two frames of the device, as a cloud with its own compute would).
"""

from __future__ import annotations

import queue
import threading

import numpy as np
from torch import nn

from tandemseg.cloud.adaptation.adapter import Adapter
from tandemseg.cloud.adaptation.config import AdaptConfig
from tandemseg.cloud.uploads import decode_upload
from tandemseg.wire.messages import UploadRequest
from tandemseg.wire.payload import FEATURES
from tandemseg.wire.weights import UpdateMessage, encode_update

FLEET = "*"


class AdaptationService:
    def __init__(self, foundation: nn.Module, device_model: nn.Module, num_classes: int, config: AdaptConfig | None = None,
                 synchronous: bool = False) -> None:
        self.config = config or AdaptConfig()
        self.foundation, self.device_model, self.num_classes = foundation, device_model, num_classes
        self.adapters: dict[str, Adapter] = {}
        self.pending: dict[str, list[np.ndarray]] = {}
        self.counters = {"queued": 0, "dropped_queue_full": 0, "dropped_device_limit": 0, "skipped_features": 0,
                         "steps": 0, "failed": 0}
        self._lock = threading.Lock()  # adapters, pending, counters
        self.synchronous = synchronous
        self._queue: queue.Queue[UploadRequest | None] = queue.Queue(maxsize=self.config.queue_frames)
        self._worker: threading.Thread | None = None
        if not synchronous:
            self._worker = threading.Thread(target=self._work, name="cema-adapt", daemon=True)
            self._worker.start()

    def key(self, device_id: str) -> str:
        return FLEET if self.config.scope == "fleet" else device_id

    def submit(self, request: UploadRequest) -> bool:
        """Offer an accepted upload to adaptation; False when it is not used (features, queue full, device limit)."""
        if request.codec == FEATURES:  # a JD bitstream has no frame to adapt on
            self._count("skipped_features")
            return False
        if self.synchronous:
            return self._consume_counted(request)
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            self._count("dropped_queue_full")
            return False
        self._count("queued")
        return True

    def version(self, device_id: str) -> int:
        with self._lock:
            adapter = self.adapters.get(self.key(device_id))
            return adapter.version if adapter else 0

    def update(self, device_id: str, since: int = 0) -> UpdateMessage | None:
        """The device's adapted tensors if newer than `since`, else None."""
        with self._lock:
            adapter = self.adapters.get(self.key(device_id))
            if adapter is None:
                return None
            (version, tensors), base = adapter.snapshot, adapter.base_hash
        if version <= since:
            return None
        return encode_update(device_id, version, base, tensors)

    def stats(self) -> dict:
        with self._lock:
            return {**self.counters, "adapters": len(self.adapters), "queue": self._queue.qsize(),
                    "resets": sum(a.resets for a in self.adapters.values())}

    def close(self, timeout: float = 10.0) -> None:
        if self._worker is not None:
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                pass
            self._worker.join(timeout)

    def _count(self, name: str) -> None:
        with self._lock:
            self.counters[name] += 1

    def _work(self) -> None:
        while True:
            request = self._queue.get()
            if request is None:
                return
            self._consume_counted(request)

    def _consume_counted(self, request: UploadRequest) -> bool:
        """A frame that fails to adapt on is counted, never raised: the segment replies already exist."""
        try:
            return self._consume(request)
        except Exception:  # noqa: BLE001 - a bad frame must not stop adaptation for everyone, nor lose a reply
            self._count("failed")
            return False

    def _consume(self, request: UploadRequest) -> bool:
        key = self.key(request.device_id)
        with self._lock:
            adapter = self.adapters.get(key)
            if adapter is None and len(self.adapters) >= self.config.max_devices:
                self.counters["dropped_device_limit"] += 1
                return False
        if adapter is None:
            adapter = Adapter(self.foundation, self.device_model, self.num_classes, self.config)
            with self._lock:
                adapter = self.adapters.setdefault(key, adapter)
        frame = decode_upload(request)
        with self._lock:
            batch = self.pending.setdefault(key, [])
            batch.append(frame)
            ready = len(batch) >= self.config.batch
            if ready:
                self.pending[key] = []
        if ready:
            adapter.step(batch)
            self._count("steps")
        return True
