"""The device runtime: frame in, label map out, with a cloud upload when the policy and budget say so.

One runtime, two links (docs/ARCHITECTURE.md): the runtime talks to the cloud only through a
`CloudLink` (in-process for experiments, HTTP for deployments), so both produce numbers through the
same code. It holds no evaluation logic; eval/collab.py drives it frame by frame.

Per frame (ACDC Alg. 1, lines 1-5):
  1. coarse segmentation of the downsampled frame (eq. 4), upsampled to the device's own prediction;
  2. the policy scores the frame (eq. 9 for `acdc`) and the controller decides whether to upload (eq. 10);
  3. if uploading: encode the frame (wire.payload) into an UploadRequest and `link.submit` it (a future).
`finish` then returns the cloud's label map if its reply arrived in time, else the device's own, with
its provenance. The local result never waits for the network unless `finish` is asked to.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from tandemseg.data.tensors import to_tensor
from tandemseg.device.budget import Controller
from tandemseg.device.link import CloudLink
from tandemseg.device.policies import FrameObservation, Policy
from tandemseg.device.uncertainty import UncertaintyMatrix
from tandemseg.errors import DataError
from tandemseg.models.blocks import resize
from tandemseg.wire.messages import UploadRequest
from tandemseg.wire.payload import decode_label_png, encode_frame, pack_probs, parse_codec


@dataclass
class DeviceOutput:
    probs: torch.Tensor  # (C, h, w) coarse probabilities at /4 of the downsampled input
    pred: np.ndarray  # (H, W) uint8: the device's prediction at full resolution
    device_ms: float


def check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise DataError(f"the device runtime takes RGB uint8 frames of shape (H, W, 3), got {got}")


@torch.inference_mode()
def run_device(model: nn.Module, frame: np.ndarray) -> DeviceOutput:
    """Eq. 4: y_coarse = M_d(f_down(x)), upsampled; exactly what `model(frame).argmax` gives, plus the coarse probs."""
    t0 = time.perf_counter()
    x = to_tensor([frame])  # (1, 3, H, W)
    logits = model.forward_coarse(x)  # (1, C, h, w)
    pred = resize(logits, x.shape[-2:]).argmax(1)[0].to(torch.uint8).numpy()  # (H, W)
    probs = logits[0].float().softmax(0)  # (C, h, w)
    return DeviceOutput(probs, pred, (time.perf_counter() - t0) * 1e3)


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
    label: np.ndarray  # (H, W) uint8 final label map
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
    extra: dict = field(default_factory=dict)


class DeviceRuntime:
    def __init__(
        self, model: nn.Module, policy: Policy, controller: Controller, link: CloudLink | None, codec: str = "png",
        device_id: str = "dev0", send_device_probs: bool = False, uncertainty: UncertaintyMatrix | None = None,
    ) -> None:
        self.model = model.eval()
        self.policy, self.controller, self.link = policy, controller, link
        self.codec = parse_codec(codec)
        self.device_id = device_id
        self.send_device_probs = send_device_probs
        self.uncertainty = uncertainty

    def process(self, frame: np.ndarray, frame_id: int, label: np.ndarray | None = None) -> FrameHandle:
        """Segment on the device now; score, decide and (maybe) submit the upload. Never blocks on the network
        (an in-process link computes inside submit; that is the link's choice)."""
        check_frame(frame)
        out = run_device(self.model, frame)
        t0 = time.perf_counter()
        obs = FrameObservation(frame_id, out.probs)
        score = self.policy.score(obs)
        upload = self.policy.fixed if self.policy.fixed is not None else self.controller.decide(score, frame_id)
        handle = FrameHandle(frame_id, out, score, bool(upload), (time.perf_counter() - t0) * 1e3)
        if handle.uploaded:
            self._upload(handle, frame)
        return handle

    def _upload(self, handle: FrameHandle, frame: np.ndarray) -> None:
        if self.link is None:
            handle.error = "no-link"
            return
        t0 = time.perf_counter()
        request = UploadRequest(
            self.device_id, handle.frame_id, encode_frame(frame, self.codec), str(self.codec), frame.shape[0], frame.shape[1],
            u_version=self.uncertainty.version if self.uncertainty is not None else 0,
        )
        if self.send_device_probs:
            request.device_probs, request.device_probs_shape = pack_probs(handle.device.probs.numpy())
        handle.encode_ms = (time.perf_counter() - t0) * 1e3
        handle.bytes_up = request.bytes_up
        self.controller.charge(request.bytes_up)
        try:
            handle.future = self.link.submit(request)
        except Exception as e:  # a link that fails to submit costs the frame its cloud result, never the frame
            handle.error = f"submit:{type(e).__name__}"

    def finish(self, handle: FrameHandle, timeout: float | None = None) -> FrameResult:
        """The final label map: the cloud's if its reply arrives within `timeout` s, else the device's."""
        base = FrameResult(
            handle.frame_id, handle.device.pred, "device", handle.uploaded, handle.score, handle.bytes_up,
            device_ms=handle.device.device_ms, score_ms=handle.score_ms, encode_ms=handle.encode_ms,
            u_version=self.uncertainty.version if self.uncertainty is not None else 0,
        )
        if not handle.uploaded:
            return base
        if handle.future is None:
            base.provenance = f"fallback:{handle.error or 'not-sent'}"
            return base
        t0 = time.perf_counter()
        try:
            reply = handle.future.result(timeout=timeout)
            label = decode_label_png(reply.label_png)
        except FutureTimeout:
            base.provenance, base.wait_ms = "fallback:timeout", (time.perf_counter() - t0) * 1e3
            return base
        except Exception as e:
            base.provenance, base.wait_ms = f"fallback:error:{type(e).__name__}", (time.perf_counter() - t0) * 1e3
            return base
        base.wait_ms = (time.perf_counter() - t0) * 1e3
        if label.shape != handle.device.pred.shape:
            base.provenance = "fallback:bad-reply-shape"
            return base
        base.label, base.provenance = label.astype(np.uint8), "cloud"
        base.bytes_down, base.cloud_ms = reply.bytes_down, reply.cloud_ms
        self._apply_u(reply)
        base.u_version = self.uncertainty.version if self.uncertainty is not None else 0
        return base

    def _apply_u(self, reply) -> None:
        """DCAM (eq. 14) happened in the cloud; take its U when it is newer than ours."""
        if self.uncertainty is not None and reply.u_matrix is not None:
            self.uncertainty.replace(np.asarray(reply.u_matrix, dtype=np.float64), reply.u_version)

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
