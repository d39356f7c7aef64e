"""HttpLink: the CloudLink of a real deployment, posting uploads to `tandemseg serve` over HTTP (httpx).

`submit` returns at once with a Future (the frame's local result never waits for the network); a small
thread pool sends the uploads. Each upload gets bounded retries with exponential backoff and jitter on
timeouts, connection errors and overload (429/5xx, honouring Retry-After within the deadline); a 4xx
that retrying cannot fix fails at once. A failed upload raises `LinkError(reason)` from its future, and
the device runtime falls back to its local result: no frame is ever lost.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import numpy as np

from tandemseg.errors import TandemsegError
from tandemseg.wire import http as wire
from tandemseg.wire.messages import CloudReply, UploadRequest
from tandemseg.wire.weights import UpdateMessage

RETRYABLE_STATUS = {429, 500, 502, 503, 504}


class LinkError(TandemsegError):
    """An upload that did not produce a reply; `reason` is a short category for the device's JSON."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3  # tries per upload, the first included
    backoff_s: float = 0.05  # first backoff; doubles per retry, with +-50% jitter
    backoff_max_s: float = 1.0
    timeout_s: float = 5.0  # per attempt (connect, read, write)
    deadline_s: float = 10.0  # per upload, all attempts and backoffs together

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.timeout_s <= 0 or self.deadline_s <= 0 or self.backoff_s < 0:
            raise ValueError(f"invalid retry policy {self}")

    def backoff(self, retry: int, rng: random.Random) -> float:
        base = min(self.backoff_max_s, self.backoff_s * 2**retry)
        return base * (0.5 + rng.random())


RTT_WINDOW = 10_000  # round trips the percentiles are computed over


class LinkStats:
    """Thread-safe counters of what crossed the link (reported in the device's JSON)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sent = 0
        self.ok = 0
        self.retries = 0
        self.failures: Counter[str] = Counter()
        self.rtt_ms: deque[float] = deque(maxlen=RTT_WINDOW)  # bounded: a long-lived device keeps the recent ones
        self.bytes_up = 0  # request bodies (frame + device probs), what UploadRequest.bytes_up counts
        self.bytes_down = 0  # reply bodies (label PNG + U)
        self.header_bytes_up = 0  # HTTP request header overhead, reported separately

    def add(self, **kw: float) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def fail(self, reason: str) -> None:
        with self._lock:
            self.failures[reason] += 1

    def ok_rtt(self, ms: float) -> None:
        with self._lock:
            self.ok += 1
            self.rtt_ms.append(ms)

    def summary(self) -> dict:
        with self._lock:
            rtt = np.asarray(self.rtt_ms) if self.rtt_ms else None
            pct = {f"rtt_ms_p{p}": (float(np.percentile(rtt, p)) if rtt is not None else None) for p in (50, 95, 99)}
            return {
                "uploads": self.sent, "replies": self.ok, "retries": self.retries, "failures": dict(self.failures),
                **pct, "bytes_up": self.bytes_up, "bytes_down": self.bytes_down, "header_bytes_up": self.header_bytes_up,
            }


class HttpLink:
    """CloudLink over HTTP. `server` is the base URL (http://host:port); `token` the device's bearer token."""

    def __init__(
        self, server: str, token: str, device_id: str | None = None, retry: RetryPolicy = RetryPolicy(),
        max_inflight: int = 4, max_pending: int = 32, seed: int = 0, transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not server.startswith(("http://", "https://")):
            raise TandemsegError(f"--server must be an http(s) URL like http://127.0.0.1:8080, got {server!r}")
        self.server, self.token, self.device_id, self.retry = server.rstrip("/"), token, device_id, retry
        self.max_pending = max_pending
        limits = httpx.Limits(max_connections=max_inflight, max_keepalive_connections=max_inflight)
        self._client = httpx.Client(base_url=self.server, timeout=retry.timeout_s, limits=limits, transport=transport)
        self._pool = ThreadPoolExecutor(max_workers=max_inflight, thread_name_prefix="http-link")
        self._pending = 0
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self.stats = LinkStats()
        self._closed = False

    # ------------------------------------------------------------ CloudLink

    def submit(self, request: UploadRequest) -> Future[CloudReply]:
        """Queue one upload; the future resolves to the reply or raises LinkError."""
        with self._lock:
            if self._closed:
                return _failed(LinkError("closed", "the link is closed"))
            if self._pending >= self.max_pending:  # never block the device: refuse, it falls back locally
                self.stats.fail("backlog")
                return _failed(LinkError("backlog", f"{self._pending} uploads already pending"))
            self._pending += 1
        submitted = time.perf_counter()
        future = self._pool.submit(self._send, request, submitted)
        future.add_done_callback(self._done)
        return future

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True)  # every upload ends within its deadline
        self._client.close()

    # ------------------------------------------------------------ device state

    def get_state(self) -> dict:
        """The cloud's view of this device (U, version); raises LinkError on failure."""
        response = self._plain("GET", self._state_path())
        return response.json()

    def put_u(self, u: np.ndarray, version: int = 0) -> dict:
        """Tell the cloud which U this device holds (DCAM then updates that one)."""
        response = self._plain("PUT", self._state_path(), json={"u": np.asarray(u, dtype=np.float64).tolist(), "u_version": int(version)})
        return response.json()

    def cloud_u_version(self, device_id: str) -> int:
        """The U version the cloud holds for this device (0 when it holds none)."""
        return int(self.get_state().get("u_version") or 0)

    def announce_u(self, device_id: str, u: np.ndarray, version: int) -> None:
        self.put_u(u, version)

    def health(self) -> dict:
        return self._plain("GET", "/v1/health", auth=False).json()

    def whoami(self) -> str:
        """The device id the server associates with this token (and remember it)."""
        device = self._plain("GET", "/v1/whoami").json()["device_id"]
        self.device_id = self.device_id or device
        if device != self.device_id:
            raise TandemsegError(f"the token belongs to device {device!r}, not {self.device_id!r}")
        return device

    def fetch_update(self, device_id: str, since: int) -> UpdateMessage | None:
        """GET /v1/devices/{id}/model?since=M: the adapted weights (checked by the device before use), None on 204."""
        path = f"/v1/devices/{device_id}/model"
        response = self._plain("GET", path, ok=(200, 204), params={"since": since})
        if response.status_code == 204:
            return None
        try:
            version = int(response.headers.get(wire.H_MODEL_VERSION, ""))
        except ValueError:
            raise LinkError("bad_reply", f"GET {path}: no integer {wire.H_MODEL_VERSION} header") from None
        self.stats.add(bytes_down=len(response.content))
        return UpdateMessage(response.content, response.headers.get(wire.H_SHA256, ""), version)

    def _state_path(self) -> str:
        return f"/v1/devices/{self.device_id or self.whoami()}/state"

    def _plain(self, method: str, path: str, auth: bool = True, ok: tuple[int, ...] = (200,), **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if auth else {}
        try:
            response = self._client.request(method, path, headers=headers, **kw)
        except httpx.HTTPError as e:
            raise LinkError(_transport_reason(e), f"{method} {path}: {e}") from None
        if response.status_code not in ok:
            raise LinkError(f"http_{response.status_code}", f"{method} {path}: {_error_text(response)}")
        return response

    # ------------------------------------------------------------ one upload with retries

    def _done(self, _: Future) -> None:
        with self._lock:
            self._pending -= 1

    def _send(self, request: UploadRequest, submitted: float) -> CloudReply:
        headers, body = wire.encode_request(request, self.token)
        self.stats.add(sent=1, bytes_up=len(body), header_bytes_up=sum(len(k) + len(v) + 4 for k, v in headers.items()))
        deadline = submitted + self.retry.deadline_s
        reason, message = "unknown", ""
        for attempt in range(self.retry.attempts):
            if attempt:
                self.stats.add(retries=1)
            wait = None
            try:
                timeout = max(0.01, min(self.retry.timeout_s, deadline - time.perf_counter()))
                response = self._client.post(wire.SEGMENT_PATH, content=body, headers=headers, timeout=timeout)
            except httpx.HTTPError as e:
                reason, message = _transport_reason(e), str(e) or type(e).__name__
            else:
                if response.status_code == 200:
                    return self._accept(response, request, submitted)
                reason, message = f"http_{response.status_code}", _error_text(response)
                if response.status_code not in RETRYABLE_STATUS:
                    break  # 400/401/403/413: the same request fails the same way again
                wait = _retry_after(response)
            pause = max(wait or 0.0, self.retry.backoff(attempt, self._rng))
            if attempt + 1 == self.retry.attempts or time.perf_counter() + pause >= deadline:
                break
            time.sleep(pause)
        self.stats.fail(reason)
        raise LinkError(reason, f"frame {request.frame_id}: {message}")

    def _accept(self, response: httpx.Response, request: UploadRequest, submitted: float) -> CloudReply:
        try:
            reply = wire.decode_reply(response.headers, response.content, request.frame_id)
        except wire.WireError as e:
            self.stats.fail("bad_reply")
            raise LinkError("bad_reply", str(e)) from None
        self.stats.add(bytes_down=len(response.content))
        self.stats.ok_rtt((time.perf_counter() - submitted) * 1000.0)
        return reply


def _failed(error: Exception) -> Future:
    future: Future = Future()
    future.set_exception(error)
    return future


def _transport_reason(e: httpx.HTTPError) -> str:
    if isinstance(e, httpx.TimeoutException):
        return "timeout"
    if isinstance(e, httpx.ConnectError):
        return "connect"
    return "network"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.strip().isdigit() else None


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))[:300]
    except ValueError:
        return response.text[:300]
