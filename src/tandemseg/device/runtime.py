"""The device runtime: frame in, label map out, with a cloud upload when the policy and budget say so.

The one place a frame is processed (docs/ARCHITECTURE.md): every path (the offline sweep, `collab`,
`device` over HTTP, the demo) drives this class; they differ only in the steps they plug in
(device/steps.py) and the `CloudLink`. A new stage is written once, as a step.

Per frame (ACDC Alg. 1, lines 1-5):
  1. model: coarse segmentation of the downsampled frame (eq. 4), upsampled to the device's own prediction
     (with MESS, `ExitModel`: the first confident early exit answers, and such a frame is never uploaded);
  2. score and decide: the policy scores the frame (eq. 9 for `acdc`), the controller decides (eq. 10);
  3. payload and link: if uploading, build the UploadRequest and `link.submit` it (a future).
`finish` then returns the fused map if the cloud's reply arrived in time, else the device's own, with its
provenance, and applies the cloud's state (U, eq. 14). The local result never waits for the network
unless `finish` is asked to.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from tandemseg.device.budget import Controller
from tandemseg.device.link import CloudLink
from tandemseg.device.policies import FrameObservation, Policy
from tandemseg.device.steps import (
    CloudLabel,
    DeviceOutput,
    FuseStep,
    ImagePayload,
    LiveModel,
    ModelStep,
    PayloadStep,
)
from tandemseg.device.uncertainty import UncertaintyMatrix
from tandemseg.device.weights import WeightUpdater
from tandemseg.wire.payload import decode_label_png


@dataclass
class FrameHandle:
    """A frame in flight: the device's result now, the cloud's maybe later."""

    frame_id: int
    device: DeviceOutput
    score: float
    uploaded: bool
    score_ms: float
    encode_ms: float = 0.0
    bytes_up: int = 0
    future: Future | None = None
    error: str | None = None  # why an intended upload did not go out (no link, submit failed)


@dataclass
class FrameResult:
    frame_id: int
    label: np.ndarray | None  # (H, W) uint8 final label map (None only in a replay that keeps no device maps)
    provenance: str  # 'cloud' | 'device' | 'fallback:<reason>'
    uploaded: bool
    score: float
    bytes_up: int = 0
    bytes_down: int = 0
    device_ms: float = 0.0
    score_ms: float = 0.0
    encode_ms: float = 0.0
    cloud_ms: float = 0.0
    wait_ms: float = 0.0
    u_version: int = 0
    exit: str = "final"  # the MESS exit that answered on the device ('final' without MESS)
    device_gflops: float | None = None
    fuse_ms: float = 0.0  # the fuse step: CFE's refinement (every frame) and fusion (answered frames)
    extra: dict = field(default_factory=dict)


class DeviceRuntime:
    """model -> score -> decide -> payload -> link -> fuse -> state; see device/steps.py for each step's interface.

    `model` is a device network (wrapped in `LiveModel`) or any ModelStep; `payload` defaults to the frame
    encoded with `codec`, with the device's probabilities attached when `send_device_probs`. For feature uploads
    (JD) pass the steps of `device.steps.make_device_steps(model, "features", ..., feature_codec=codec)`.
    """

    def __init__(
        self, model: nn.Module | ModelStep, policy: Policy, controller: Controller, link: CloudLink | None, codec: str = "png",
        device_id: str = "dev0", send_device_probs: bool = False, uncertainty: UncertaintyMatrix | None = None,
        payload: PayloadStep | None = None, fuse: FuseStep | None = None, weights: WeightUpdater | None = None,
    ) -> None:
        self.model_step: ModelStep = LiveModel(model) if isinstance(model, nn.Module) else model
        self.policy, self.controller, self.link = policy, controller, link
        self.payload: PayloadStep = payload or ImagePayload(codec, device_id, send_device_probs)
        self.fuse: FuseStep = fuse or CloudLabel()
        self.uncertainty = uncertainty
        self.weights = weights  # CEMA: the cloud's weight updates, applied between frames (device/weights.py)
        self.device_id = device_id

    @property
    def u_version(self) -> int:
        return self.uncertainty.version if self.uncertainty is not None else 0

    def process(self, frame: np.ndarray | None, frame_id: int) -> FrameHandle:
        """Segment on the device now; score, decide and (maybe) submit the upload. Never blocks on the network
        (an in-process link computes inside submit; that is the link's choice)."""
        out = self.model_step.run(frame, frame_id)
        t0 = time.perf_counter()
        # a frame an early exit answered is done on the device (MESS): the controller sees it and never sends it
        obs = FrameObservation(frame_id, out.probs)
        score = -math.inf if out.answered_early else self.policy.score(obs)
        if self.weights is not None:
            self.weights.observe(obs.mean_entropy, frame_id)
        upload = self.policy.fixed if self.policy.fixed is not None and not out.answered_early else self.controller.decide(score, frame_id)
        handle = FrameHandle(frame_id, out, score, bool(upload), (time.perf_counter() - t0) * 1e3)
        if handle.uploaded:
            self._upload(handle, frame)
        return handle

    def _upload(self, handle: FrameHandle, frame: np.ndarray | None) -> None:
        if self.link is None:
            handle.error = "no-link"
            return
        t0 = time.perf_counter()
        request = self.payload.build(frame, handle.frame_id, handle.device, self.u_version)
        request.reply_probs = self.fuse.wants_cloud_probs
        handle.encode_ms = (time.perf_counter() - t0) * 1e3
        handle.bytes_up = request.bytes_up
        self.controller.charge(request.bytes_up)
        try:
            handle.future = self.link.submit(request)
        except Exception as e:  # a link that fails to submit costs the frame its cloud result, never the frame
            handle.error = f"submit:{type(e).__name__}"

    def finish(self, handle: FrameHandle, timeout: float | None = None) -> FrameResult:
        """The final label map: fused with the cloud's if its reply arrives within `timeout` s, else the device's."""
        base = FrameResult(
            handle.frame_id, None, "device", handle.uploaded, handle.score, handle.bytes_up,
            device_ms=handle.device.device_ms, score_ms=handle.score_ms, encode_ms=handle.encode_ms, u_version=self.u_version,
            exit=handle.device.exit, device_gflops=handle.device.gflops,
        )
        if not handle.uploaded:
            return self._local(handle, base)
        if handle.future is None:
            base.provenance = f"fallback:{handle.error or 'not-sent'}"
            return self._local(handle, base)
        t0 = time.perf_counter()
        try:
            reply = handle.future.result(timeout=timeout)
            label = decode_label_png(reply.label_png)
        except FutureTimeout:
            base.provenance, base.wait_ms = "fallback:timeout", (time.perf_counter() - t0) * 1e3
            return self._local(handle, base)
        except Exception as e:
            base.provenance, base.wait_ms = f"fallback:error:{type(e).__name__}", (time.perf_counter() - t0) * 1e3
            return self._local(handle, base)
        base.wait_ms = (time.perf_counter() - t0) * 1e3
        if label.shape != handle.device.size:
            base.provenance = "fallback:bad-reply-shape"
            return self._local(handle, base)
        t0 = time.perf_counter()
        try:
            base.label = self.fuse.fuse(handle.device, label, reply)
        except Exception as e:  # a reply the fuse step cannot use (e.g. probabilities of another label set): its map stands
            base.label, base.extra["fuse_error"] = label.astype(np.uint8), f"{type(e).__name__}: {str(e)[:120]}"
        base.provenance, base.fuse_ms = "cloud", (time.perf_counter() - t0) * 1e3
        base.bytes_down, base.cloud_ms = reply.bytes_down, reply.cloud_ms
        self._apply_u(reply, base)
        base.u_version = self.u_version
        self._apply_weights(reply, base)
        return base

    def _local(self, handle: FrameHandle, result: FrameResult) -> FrameResult:
        """A frame without a cloud answer shows the device's map (refined, with CFE); never waits on the network."""
        t0 = time.perf_counter()
        result.label = self.fuse.local(handle.device)
        result.fuse_ms = (time.perf_counter() - t0) * 1e3
        return result

    def _apply_weights(self, reply, result: FrameResult) -> None:
        """CEMA: the reply says a newer model exists; fetch it and swap it in now, between frames. A failed fetch or
        a refused update leaves the weights as they are (the next reply offers it again)."""
        if self.weights is None or reply.model_version <= self.weights.version or self.link is None:
            return
        try:
            message = self.link.fetch_update(self.device_id, self.weights.version)
        except Exception as e:
            result.extra["update_error"] = f"fetch:{type(e).__name__}"
            return
        if message is not None:
            result.extra["update_bytes"] = message.bytes_down
            result.extra["update_applied"] = self.weights.offer(message, result.frame_id)

    def _apply_u(self, reply, result: FrameResult) -> None:
        """DCAM (eq. 14) happened in the cloud; take its U when it is newer than ours. A reply older than our U is
        either late (replies overtake each other) or from a cloud that lost its state (a restart): the cloud's own
        version tells which, and a cloud behind us gets our U back, so DCAM goes on from it instead of restarting
        from the shipped one."""
        if self.uncertainty is None:
            return
        if reply.u_matrix is not None:
            self.uncertainty.replace(np.asarray(reply.u_matrix, dtype=np.float64), reply.u_version)
        elif reply.u_version < self.uncertainty.version and self.link is not None:
            try:
                if self.link.cloud_u_version(self.device_id) < self.uncertainty.version:
                    self.link.announce_u(self.device_id, self.uncertainty.u, self.uncertainty.version)
                    result.extra["u_announced"] = self.uncertainty.version
            except Exception as e:  # the frame's result stands; the next stale reply tries again
                result.extra["u_announce_error"] = type(e).__name__

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
