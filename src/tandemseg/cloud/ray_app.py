"""The same cloud service on Ray Serve: `tandemseg serve --ray --replicas N`.

Three deployments, each a thin handler over plain code:

* `Segmenter` (N replicas, or autoscaled): a plain `CloudService` with Ray Serve's own dynamic batching
  (`@serve.batch`). It runs the service's stateless `segment`: the label map and each frame's DCAM
  evidence (class mask and U_new, eq. 13 and 5+19), which needs no per-device state, so any replica can
  take any frame.
* `DeviceStates` (1 replica): the same per-device store the single-process service uses
  (cloud/states.py): every device's U and version, eq. 14 applied atomically. One owner of the state
  keeps DCAM correct however many segmenter replicas run.
* `Adaptation` (1 replica, only with `serve --ray --adapt`): CEMA's `AdaptationService` (cloud/adaptation/)
  in its own actor with its own CPU, so adapting scales apart from segmenting; the ingress queues each
  accepted upload there after the reply exists, and serves the weight route from it.
* `Ingress`: the FastAPI app of cloud/app.py (auth, limits, wire format, metrics) over `RayBackend`.

Pointing it at a real cluster: start Ray on the cluster (`ray start --head` on one node, `ray start
--address HEAD:6379` on the others), then run `tandemseg serve --ray --ray-address HEAD:6379 ...` on
a node of that cluster (or `--ray-address ray://HEAD:10001` through Ray Client). The checkpoint path must
be readable on every node (shared storage), see docs/protocol.md.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from tandemseg.cloud.app import Limits, create_app
from tandemseg.cloud.auth import TokenMap
from tandemseg.cloud.batching import BatchConfig, Overloaded
from tandemseg.cloud.dcam import Dcam, DcamEvidence, DcamSettings
from tandemseg.cloud.states import DeviceStateStore
from tandemseg.errors import ServerFault, TandemsegError
from tandemseg.wire.http import WireError
from tandemseg.wire.messages import CloudReply, UploadRequest


@dataclass
class RayOptions:
    """How the service is laid out on Ray."""

    replicas: int = 1
    autoscale: tuple[int, int] | None = None  # (min, max) replicas; overrides `replicas`
    replica_cpus: float = 1.0  # CPUs each segmenter replica reserves
    threads: int = 0  # torch threads per replica (0 = torch's default)
    batching: BatchConfig = field(default_factory=BatchConfig)


class SegmenterImpl:
    """A CloudService whose per-device state lives elsewhere (DeviceStates); Ray-free, so it is testable alone."""

    def __init__(self, ckpt: str, dcam: Dcam, threads: int = 0) -> None:
        import torch

        from tandemseg.cloud.service import CloudService, ModelSegmenter
        from tandemseg.models.checkpoint import load_checkpoint

        if threads:
            torch.set_num_threads(threads)
        ck = load_checkpoint(ckpt, expect_kind="cloud")
        self.service = CloudService(ModelSegmenter(ck.model), ck.classes, dcam.alpha, dcam_settings=dcam.settings)

    def segment(self, requests: list[UploadRequest]) -> list[tuple[CloudReply, DcamEvidence | None] | Exception]:
        """One batched forward; if the batch fails, each frame alone, so a bad frame fails only itself."""
        try:
            return list(self.service.segment(requests))
        except Exception:  # noqa: BLE001 - isolated below
            return [self._one(r) for r in requests]

    def _one(self, request: UploadRequest) -> tuple[CloudReply, DcamEvidence | None] | Exception:
        """As the FastAPI path maps them: the frame's own fault is a 400, the cloud's a 503 the client retries."""
        try:
            return self.service.segment([request])[0]
        except (TandemsegError, ValueError) as e:
            return WireError(f"cannot process frame {request.frame_id}: {e}")
        except Exception as e:  # noqa: BLE001 - returned to the one request that met it
            return ServerFault(f"the cloud failed on frame {request.frame_id} ({type(e).__name__}); retry later")


class RayBackend:
    """The app's Backend over the two deployment handles (cloud/app.py `Backend`)."""

    def __init__(self, segmenter: DeploymentHandle, states: DeploymentHandle, num_classes: int,
                 adaptation: DeploymentHandle | None = None) -> None:
        self.segmenter, self.states, self.num_classes = segmenter, states, num_classes
        self.adaptation = adaptation

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def queue_depth(self) -> int:
        return 0  # Ray Serve owns the queues; see its own metrics

    async def segment(self, request: UploadRequest) -> CloudReply:
        try:
            result = await self.segmenter.segment.remote(request)
        except BackPressureError:
            raise Overloaded(1.0) from None
        if isinstance(result, Exception):
            raise result
        reply, evidence = result
        u, version = await self.states.record.remote(request.device_id, request.u_version, evidence)
        reply.u_matrix, reply.u_version = u, version
        if self.adaptation is not None:  # after the reply exists: the actor only queues it
            reply.model_version = await self.adaptation.submit.remote(request)
        return reply

    async def device_state(self, device_id: str) -> dict | None:
        return await self.states.get.remote(device_id)

    async def set_device_u(self, device_id: str, u: np.ndarray, version: int) -> dict:
        return await self.states.set.remote(device_id, u, version)

    async def model_update(self, device_id: str, since: int):
        """CEMA's weight push from the Adaptation deployment (None without one, or nothing newer)."""
        if self.adaptation is None:
            return None
        return await self.adaptation.update.remote(device_id, since)


# ---------------------------------------------------------------- deployments (thin handlers)


@serve.deployment(ray_actor_options={"num_cpus": 0})
class DeviceStates(DeviceStateStore):
    pass


@serve.deployment
class Segmenter:
    def __init__(self, ckpt: str, dcam: Dcam, threads: int, batching: BatchConfig) -> None:
        self.impl = SegmenterImpl(ckpt, dcam, threads)
        self.segment_batch.set_max_batch_size(batching.max_batch)  # Ray's batching, configured like ours
        self.segment_batch.set_batch_wait_timeout_s(batching.max_wait_ms / 1000.0)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def segment_batch(self, requests: list[UploadRequest]) -> list:
        return await asyncio.to_thread(self.impl.segment, requests)

    async def segment(self, request: UploadRequest):
        return await self.segment_batch(request)


@serve.deployment
class Adaptation:
    """A thin handler over `AdaptationService` (its worker thread adapts; these methods only queue and read)."""

    def __init__(self, cloud_ckpt: str, device_ckpt: str, config, threads: int) -> None:
        import torch

        from tandemseg.cloud.adaptation.service import AdaptationService
        from tandemseg.models.checkpoint import load_checkpoint

        if threads:
            torch.set_num_threads(threads)
        cloud = load_checkpoint(cloud_ckpt, expect_kind="cloud")
        device = load_checkpoint(device_ckpt, expect_kind="device", expect_classes=cloud.classes).model
        self.service = AdaptationService(cloud.model, device, cloud.classes.num_classes, config)

    def submit(self, request: UploadRequest) -> int:
        """Queue the upload; the device's current model version (for the reply)."""
        self.service.submit(request)
        return self.service.version(request.device_id)

    def update(self, device_id: str, since: int):
        return self.service.update(device_id, since)


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress()
class Ingress:
    def __init__(self, segmenter: DeploymentHandle, states: DeploymentHandle, num_classes: int, tokens: TokenMap, limits: Limits,
                 adaptation: DeploymentHandle | None = None) -> None:
        self.backend = RayBackend(segmenter, states, num_classes, adaptation)
        self.tokens, self.limits = tokens, limits

    def __serve_build_asgi_app__(self):
        return create_app(self.backend, self.tokens, self.limits)


def build_ray_app(
    ckpt: str, tokens: TokenMap, limits: Limits, alpha: float, initial_u: np.ndarray | None, options: RayOptions,
    settings: DcamSettings = DcamSettings(), adapt: tuple[str, object] | None = None,
):
    """The Serve application graph: Ingress -> (Segmenter x N, DeviceStates x 1[, Adaptation x 1]).

    `adapt` = (device checkpoint, AdaptConfig) deploys CEMA's adaptation as its own actor (one CPU).

    `settings` should follow the fitted U's metadata (DcamSettings.from_meta), as `tandemseg serve` does.
    """
    from tandemseg.data.classes import ClassTable
    from tandemseg.models.checkpoint import read_card

    classes = ClassTable.from_json(read_card(ckpt)["classes"])  # fail early, before Ray starts replicas
    num_classes = classes.num_classes
    dcam = Dcam(alpha, settings, classes.ignore_index)
    seg_opts: dict = {"ray_actor_options": {"num_cpus": options.replica_cpus}, "max_queued_requests": options.batching.max_queue}
    if options.autoscale:
        lo, hi = options.autoscale
        seg_opts["autoscaling_config"] = {"min_replicas": lo, "max_replicas": hi, "target_ongoing_requests": options.batching.max_batch}
    else:
        seg_opts["num_replicas"] = options.replicas
    segmenter = Segmenter.options(**seg_opts).bind(ckpt, dcam, options.threads, options.batching)
    states = DeviceStates.bind(num_classes, initial_u, dcam)
    adaptation = None
    if adapt is not None:
        device_ckpt, config = adapt
        adaptation = Adaptation.options(ray_actor_options={"num_cpus": options.replica_cpus}).bind(ckpt, device_ckpt, config, options.threads)
    return Ingress.bind(segmenter, states, num_classes, tokens, limits, adaptation)


def start_ray(address: str | None, host: str, port: int, num_cpus: int | None = None, attempts: int = 3) -> None:
    """Connect to (or start) Ray and its HTTP proxy on host:port; no dashboard, no usage stats.

    A local Ray gives its raylet a fixed 30 s to register; on an overloaded host that can pass, so a
    local start is retried (`attempts` times) before giving up.
    """
    import os

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs = {"address": address} if address else {"num_cpus": num_cpus, "include_dashboard": False}
    for attempt in range(attempts):
        if ray.is_initialized():
            break
        try:
            ray.init(log_to_driver=False, **kwargs)
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for a slow raylet
            ray.shutdown()
            if address or attempt + 1 == attempts or "timed out during startup" not in str(e):
                raise
    serve.start(http_options={"host": host, "port": port})


def stop_ray() -> None:
    import ray

    serve.shutdown()
    ray.shutdown()
