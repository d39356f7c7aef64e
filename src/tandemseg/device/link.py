"""The one small interface between the device runtime and the cloud: submit an upload, get a future.

`InProcessLink` calls a cloud service (cloud/service.py `CloudService`) in the same process (offline
experiments); the HTTP link (device/http_link.py) posts to a running server. The device runtime cannot
tell them apart, and the device side knows the cloud only through the wire messages.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from tandemseg.wire.messages import CloudReply, UploadRequest
from tandemseg.wire.weights import UpdateMessage


class CloudLink(Protocol):
    def submit(self, request: UploadRequest) -> Future[CloudReply]:
        """Send one upload; the future resolves to the reply or raises (timeout, HTTP error, ...)."""
        ...

    def close(self) -> None: ...

    def fetch_update(self, device_id: str, since: int) -> UpdateMessage | None:
        """The device's adapted weights newer than version `since` (CEMA), or None."""
        ...

    def cloud_u_version(self, device_id: str) -> int:
        """The U version the cloud holds for this device."""
        ...

    def announce_u(self, device_id: str, u, version: int) -> None:
        """Give the cloud this device's U (a cloud that lost its state continues DCAM from it)."""
        ...


class SegmentsUploads(Protocol):
    """What the in-process link needs of the cloud: a batch of uploads in, a reply per upload out."""

    def segment_batch(self, requests: list[UploadRequest]) -> list[CloudReply]: ...

    def model_update(self, device_id: str, since: int = 0) -> UpdateMessage | None: ...

    def device_state(self, device_id: str) -> dict: ...

    def set_uncertainty(self, device_id: str, u, version: int = 0) -> None: ...


class InProcessLink:
    """A CloudLink that calls a `CloudService` in this process (offline experiments).

    By default `submit` runs the service synchronously and returns a completed future, so a run is
    deterministic and never competes with itself for CPU; `threaded=True` runs it on one worker thread
    instead, which lets the device go on while the cloud computes (as over a network).
    """

    def __init__(self, service: SegmentsUploads, threaded: bool = False) -> None:
        self.service = service
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cloud") if threaded else None

    def _call(self, request: UploadRequest) -> CloudReply:
        return self.service.segment_batch([request])[0]

    def submit(self, request: UploadRequest) -> Future[CloudReply]:
        if self._executor is not None:
            return self._executor.submit(self._call, request)
        future: Future[CloudReply] = Future()
        try:
            future.set_result(self._call(request))
        except Exception as e:  # the device must see the failure through the future, as with any link
            future.set_exception(e)
        return future

    def fetch_update(self, device_id: str, since: int) -> UpdateMessage | None:
        return self.service.model_update(device_id, since)

    def cloud_u_version(self, device_id: str) -> int:
        return int(self.service.device_state(device_id).get("u_version") or 0)

    def announce_u(self, device_id: str, u, version: int) -> None:
        self.service.set_uncertainty(device_id, u, version)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
