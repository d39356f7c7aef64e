"""The thin FastAPI layer over the cloud service: auth, limits, the wire format, metrics. No model logic here.

`create_app(service, tokens, limits)` builds an app around either a plain `CloudService` (batched here by
`MicroBatcher`) or any `Backend` (the Ray Serve deployment handle, cloud/ray_app.py). Every error is JSON
`{"error": "..."}` with a 4xx/5xx status; no traceback ever reaches a client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tandemseg.cloud.auth import TokenMap
from tandemseg.cloud.batching import BatchConfig, MicroBatcher, Overloaded, ShuttingDown
from tandemseg.errors import TandemsegError
from tandemseg.jsonio import json_safe
from tandemseg.wire import http as wire
from tandemseg.wire.messages import PROTOCOL_VERSION, CloudReply, UploadRequest
from tandemseg.wire.weights import UpdateMessage

log = logging.getLogger("tandemseg.cloud")


LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class Limits:
    """Request limits: wire limits (body size, image size) and per-device fairness."""

    wire: wire.WireLimits = field(default_factory=wire.WireLimits)
    max_inflight_per_device: int = 32  # one device cannot fill the whole queue (429 beyond this)
    metrics_public: bool = False  # False: /metrics answers loopback clients only (it shows load and device counts)
    read_timeout_s: float = 10.0  # a request body not received within this is refused (408): slow clients hold no slot


class Backend(Protocol):
    """What the HTTP layer needs from the cloud: segment one upload (batched behind the scenes) and device state."""

    num_classes: int

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def segment(self, request: UploadRequest) -> CloudReply: ...

    def queue_depth(self) -> int: ...

    async def device_state(self, device_id: str) -> dict | None: ...

    async def set_device_u(self, device_id: str, u: np.ndarray, version: int) -> dict: ...

    async def model_update(self, device_id: str, since: int) -> UpdateMessage | None:
        """CEMA's weight push (None: nothing newer, or this backend does not adapt)."""
        ...


class Metrics:
    """Prometheus metrics on a per-app registry (tests run several apps in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tandemseg_requests_total", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r)
        self.latency = Histogram(
            "tandemseg_request_seconds", "request latency (s) by endpoint", ["endpoint"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.batch_size = Histogram("tandemseg_batch_size", "frames per batched forward", registry=r, buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64))
        self.batch_seconds = Histogram("tandemseg_batch_seconds", "seconds per batched forward", registry=r)
        self.queue_depth = Gauge("tandemseg_queue_depth", "requests waiting for a batch", registry=r)
        self.dcam_updates = Counter("tandemseg_dcam_updates_total", "replies that carried a new U (DCAM)", registry=r)
        self.bytes_in = Counter("tandemseg_bytes_in_total", "request body bytes of /v1/segment", registry=r)
        self.bytes_out = Counter("tandemseg_bytes_out_total", "reply body bytes of /v1/segment", registry=r)
        ProcessCollector(registry=r)  # process_cpu_seconds_total etc.: the load test's CPU-time efficiency reads it

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)


class BatchedBackend:
    """A plain CloudService behind a MicroBatcher: one batched `segment_batch` per window."""

    def __init__(self, service: Any, batching: BatchConfig = BatchConfig(), metrics: Metrics | None = None) -> None:
        self.service = service
        self.num_classes = service_num_classes(service)
        self.batcher: MicroBatcher[UploadRequest, CloudReply] = MicroBatcher(
            service.segment_batch, batching, on_batch=metrics.observe_batch if metrics else None
        )

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()

    async def segment(self, request: UploadRequest) -> CloudReply:
        return await self.batcher.submit(request)

    def queue_depth(self) -> int:
        return self.batcher.depth

    async def device_state(self, device_id: str) -> dict | None:
        return await run_in_threadpool(service_device_state, self.service, device_id)

    async def set_device_u(self, device_id: str, u: np.ndarray, version: int) -> dict:
        return await run_in_threadpool(service_set_u, self.service, device_id, u, version)

    async def model_update(self, device_id: str, since: int) -> UpdateMessage | None:
        return await run_in_threadpool(self.service.model_update, device_id, since)


# ---------------------------------------------------------------- adapters over the plain CloudService


def service_num_classes(service: Any) -> int:
    return int(service.classes.num_classes)


def service_device_state(service: Any, device_id: str) -> dict | None:
    """CloudService.device_state as JSON: device_id, u_version, frames, dcam_updates, u (None until known)."""
    return json_safe(service.device_state(device_id))


def service_set_u(service: Any, device_id: str, u: np.ndarray, version: int) -> dict:
    service.set_uncertainty(device_id, u, version)
    return service_device_state(service, device_id) or {}


# ---------------------------------------------------------------- the app


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


SEGMENT_OPENAPI = {
    "parameters": [
        {"name": h, "in": "header", "required": req, "schema": {"type": "string"}, "description": d}
        for h, req, d in [
            (wire.H_PROTOCOL, True, f"protocol version; this server speaks {PROTOCOL_VERSION}"),
            (wire.H_FRAME, True, "frame id (non-negative integer), echoed in the reply"),
            (wire.H_CODEC, True, "png | jpeg:Q | webp:Q"),
            (wire.H_SIZE, True, "HxW of the frame"),
            (wire.H_IMAGE_BYTES, True, "the first N body bytes are the encoded frame"),
            (wire.H_PROBS_SHAPE, False, "Cxhxw of the zlib uint8 device probabilities that follow the frame"),
            (wire.H_U_VERSION, False, "the U version the device holds"),
            (wire.H_DEVICE, False, "optional; must equal the token's device"),
            (wire.H_REPLY_PROBS, False, "1: the reply also carries the cloud's 4-bit class probabilities (CFE)"),
        ]
    ],
    "requestBody": {"required": True, "content": {wire.OCTET: {"schema": {"type": "string", "format": "binary"}}}},
    "responses": {
        "200": {
            "description": "label PNG, then the cloud's probabilities when asked (X-Tandemseg-Cloud-Probs-Shape/-Bytes), then U as "
                           "float32 C*C when DCAM changed it (headers X-Tandemseg-Label-Bytes, X-Tandemseg-U-Shape)",
            "content": {wire.OCTET: {"schema": {"type": "string", "format": "binary"}}},
        },
        **{str(code): {"description": why, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
           for code, why in [(400, "malformed request"), (401, "missing or wrong token"), (403, "acting for another device"),
                             (413, "body or image too large"), (429, "this device has too many requests in flight"),
                             (503, "queue full (Retry-After)")]},
    },
}


def create_app(service: Any, tokens: TokenMap, limits: Limits = Limits(), batching: BatchConfig = BatchConfig()) -> FastAPI:
    """Build the HTTP app. `service` is a CloudService (batched here) or a ready `Backend`."""
    metrics = Metrics()
    # a plain service segments lists of uploads (`segment_batch`) and is batched here; a Backend takes one at a time
    backend: Backend = BatchedBackend(service, batching, metrics) if hasattr(service, "segment_batch") else service
    inflight: dict[str, int] = {}  # device -> requests in flight, for the per-device 429 (app-local state)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await backend.start()
        try:
            yield
        finally:
            await backend.stop()

    app = FastAPI(title="tandemseg cloud", version=str(PROTOCOL_VERSION), lifespan=lifespan,
                  description="Edge-cloud collaborative segmentation (ACDC): fine predictions and DCAM updates of U. See docs/protocol.md.")
    app.state.backend, app.state.metrics, app.state.tokens = backend, metrics, tokens
    _install_error_handlers(app)

    def authenticate(request: Request) -> str | None:
        return tokens.device_for_header(request.headers.get("authorization"))

    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.get("/v1/health", summary="liveness and queue depth")
    async def health() -> dict:
        return {"status": "ok", "protocol": PROTOCOL_VERSION, "classes": backend.num_classes, "queue_depth": backend.queue_depth()}

    @app.get("/metrics", summary="Prometheus metrics (loopback clients only unless the server allows all)", response_class=Response)
    async def prometheus(request: Request) -> Response:
        host = request.client.host if request.client else ""
        if not limits.metrics_public and host not in LOOPBACK:
            return error(403, "/metrics answers loopback clients only; start the server with --metrics-public to expose it")
        metrics.queue_depth.set(backend.queue_depth())
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post(wire.SEGMENT_PATH, summary="segment one uploaded frame; DCAM may return a new U", openapi_extra=SEGMENT_OPENAPI,
              response_class=Response)
    async def segment(request: Request) -> Response:
        device = authenticate(request)
        if device is None:
            return error(401, "missing or unknown token: send 'Authorization: Bearer TOKEN' with your device's token",
                         {"WWW-Authenticate": "Bearer"})
        if inflight.get(device, 0) >= limits.max_inflight_per_device:
            return error(429, f"device {device!r} already has {limits.max_inflight_per_device} requests in flight; wait for replies",
                         {"Retry-After": "1"})
        inflight[device] = inflight.get(device, 0) + 1
        try:
            return await _segment(request, device)
        finally:
            inflight[device] -= 1

    async def _segment(request: Request, device: str) -> Response:
        if backend.queue_depth() >= batching.max_queue:  # admission before reading or decoding anything
            return error(503, f"{backend.queue_depth()} frames are waiting; retry later", {"Retry-After": "1"})
        try:
            body = await asyncio.wait_for(read_body(request, limits.wire.max_body_bytes), limits.read_timeout_s)
        except TimeoutError:
            return error(408, f"the request body did not arrive within {limits.read_timeout_s:g} s")
        metrics.bytes_in.inc(len(body))
        upload = wire.decode_request(request.headers, body, device, limits.wire)
        if upload.device_probs_shape is not None and upload.device_probs_shape[0] != backend.num_classes:
            raise wire.WireError(f"device_probs have {upload.device_probs_shape[0]} classes but the cloud model predicts {backend.num_classes}")
        await run_in_threadpool(wire.check_image, upload, limits.wire)  # a corrupt frame fails alone, before batching
        try:
            reply = await backend.segment(upload)
        except Overloaded as e:
            return error(503, str(e), {"Retry-After": str(int(e.retry_after))})
        except ShuttingDown as e:
            return error(503, str(e), {"Retry-After": "5"})
        except (TandemsegError, ValueError) as e:
            return error(getattr(e, "status", 400), f"cannot process frame {upload.frame_id}: {e}")
        headers, payload = wire.encode_reply(reply)
        if reply.u_matrix is not None:
            metrics.dcam_updates.inc()
        metrics.bytes_out.inc(len(payload))
        return Response(payload, media_type=wire.OCTET, headers=headers)

    @app.get("/v1/whoami", summary="the device id the token belongs to")
    async def whoami(request: Request):
        device = authenticate(request)
        if device is None:
            return error(401, "missing or unknown token", {"WWW-Authenticate": "Bearer"})
        return {"device_id": device}

    def own_state(request: Request, device_id: str, verb: str, what: str = "state") -> tuple[str | None, Any]:
        """(device, None) when the caller's token belongs to `device_id`, else (None, the 401/403 response)."""
        device = authenticate(request)
        if device is None:
            return None, error(401, "missing or unknown token", {"WWW-Authenticate": "Bearer"})
        if device_id != device:
            return None, error(403, f"your token belongs to {device!r}; a device {verb} only its own {what}")
        return device, None

    @app.get("/v1/devices/{device_id}/state", summary="the calling device's U and version")
    async def get_state(device_id: str, request: Request):
        device, refusal = own_state(request, device_id, "reads")
        if refusal is not None:
            return refusal
        state = await backend.device_state(device)
        if state is None:
            return error(404, f"no state for {device!r} yet")
        return state

    @app.put("/v1/devices/{device_id}/state", summary="set the calling device's U (e.g. after it loaded a new U file)")
    async def put_state(device_id: str, request: Request):
        device, refusal = own_state(request, device_id, "changes")
        if refusal is not None:
            return refusal
        body = await read_body(request, limits.wire.max_body_bytes)
        obj = _json_object(body, "u")
        u = wire.decode_u_json(obj["u"], backend.num_classes)
        version = obj.get("u_version", 0)
        if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= wire.MAX_U_VERSION:
            raise wire.WireError(f"u_version must be an integer in [0, {wire.MAX_U_VERSION}]")
        return await backend.set_device_u(device, u, version)

    @app.get("/v1/devices/{device_id}/model", summary="the calling device's adapted weights newer than ?since=M (CEMA)",
             responses={200: {"description": "safetensors bytes of the adapted tensors (headers: model version, sha256)",
                              "content": {wire.OCTET: {"schema": {"type": "string", "format": "binary"}}}},
                        204: {"description": "nothing newer than `since`"}})
    async def get_model(device_id: str, request: Request, since: int = 0):
        device, refusal = own_state(request, device_id, "fetches", "model")
        if refusal is not None:
            return refusal
        if not 0 <= since <= wire.MAX_U_VERSION:
            raise wire.WireError(f"since must be an integer in [0, {wire.MAX_U_VERSION}]")
        message = await backend.model_update(device, since)
        if message is None:
            return Response(status_code=204)
        headers = {wire.H_MODEL_VERSION: str(message.version), wire.H_SHA256: message.sha256}
        return Response(message.payload, media_type=wire.OCTET, headers=headers)

    app.openapi_schema = None
    _add_error_schema(app)
    return app


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refusing (413) anything beyond `max_bytes` before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise wire.WireError("Content-Length must be a non-negative integer")
        if int(declared) > max_bytes:
            raise wire.WireError(f"body of {int(declared)} bytes exceeds the limit of {max_bytes} bytes", 413)
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise wire.WireError(f"body exceeds the limit of {max_bytes} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def _json_object(body: bytes, key: str) -> dict:
    try:
        obj = json.loads(body, parse_constant=lambda c: float("nan"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nesting deeper than the parser goes
        raise wire.WireError(f"body is not JSON a server can read ({str(e)[:80]}); send {{\"{key}\": ...}}") from None
    if not isinstance(obj, dict) or key not in obj:
        raise wire.WireError(f"body must be a JSON object with the key {key!r}")
    return obj


class MetricsMiddleware:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware): request counts by status and latency."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def send_and_record(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            endpoint = _endpoint_label(scope.get("path", ""))
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


def _endpoint_label(path: str) -> str:
    """Low-cardinality metric label: the route template, never the raw path."""
    if path.startswith("/v1/devices/"):
        return "/v1/devices/{id}/model" if path.endswith("/model") else "/v1/devices/{id}/state"
    return path if path in (wire.SEGMENT_PATH, "/v1/health", "/v1/whoami", "/metrics") else "other"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(wire.WireError)
    async def on_wire(_: Request, exc: wire.WireError):
        return error(exc.status, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def on_validation(_: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        return error(400, f"invalid request: {first.get('msg', 'malformed')} at {'.'.join(map(str, first.get('loc', ())))}")

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception):  # never let a traceback reach the client
        log.error("unhandled %s on %s: %s", type(exc).__name__, request.url.path, exc)
        return error(500, "internal server error; the server logged the details")


def _add_error_schema(app: FastAPI) -> None:
    """Declare the {"error": "..."} body in the OpenAPI components so the $refs above resolve."""
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = original()
            schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = {
                "type": "object", "required": ["error"], "properties": {"error": {"type": "string"}},
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def warm_up(model: Any, height: int, width: int, max_batch: int) -> float:
    """One forward per batch size 1..max_batch at HxW before serving: the CPU backend builds its kernels per
    input shape, and a first request of each new batch size would otherwise stall the queue. Returns seconds."""
    import torch

    from tandemseg.data.tensors import to_tensor

    start = time.perf_counter()
    frame = np.zeros((height, width, 3), np.uint8)
    with torch.inference_mode():
        for n in range(1, max_batch + 1):
            model(to_tensor([frame] * n))
    return time.perf_counter() - start


class ServerThread:
    """uvicorn serving `app` on a background thread (port 0 = a free port); `url` once started.

    For tests and benchmarks that need a real server in-process (and need to stop it mid-stream);
    `tandemseg serve` runs uvicorn itself.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", access_log=False)
        self.server = uvicorn.Server(config)
        self.host = host
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.url = ""

    def start(self, timeout: float = 20.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.server.should_exit = True
                raise RuntimeError(f"uvicorn did not start on {self.host}")
            time.sleep(0.02)
        self.url = f"http://{self.host}:{self.server.servers[0].sockets[0].getsockname()[1]}"
        return self.url

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, finish in-flight requests, close connections; waits up to `timeout` s (None: until done)."""
        self.server.should_exit = True
        self.thread.join(timeout=timeout)


@contextmanager
def running_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """`with running_server(app) as url:` a real uvicorn server for the block's duration."""
    server = ServerThread(app, host, port)
    url = server.start()
    try:
        yield url
    finally:
        server.stop()
