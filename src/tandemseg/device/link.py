"""The one small interface between the device runtime and the cloud: submit an upload, get a future.

`InProcessLink` calls a `CloudService` in the same process (offline experiments); the HTTP link
(device/http_link.py) posts to a running server. The device runtime cannot tell them apart.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Protocol

from tandemseg.wire.messages import CloudReply, UploadRequest


class CloudLink(Protocol):
    def submit(self, request: UploadRequest) -> Future[CloudReply]:
        """Send one upload; the future resolves to the reply or raises (timeout, HTTP error, ...)."""
        ...

    def close(self) -> None: ...
