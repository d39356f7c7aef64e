"""The device pipeline's steps, one small interface each (docs/ARCHITECTURE.md, "one runtime").

`DeviceRuntime` (device/runtime.py) is the only place a frame is processed; it chains

    model    -> DeviceOutput         run the device network (ACDC eq. 4)      ModelStep: `LiveModel`
    score    -> float                the upload policy (eq. 9, entropy, ...)  device/policies.py
    decide   -> bool                 the budget controller (eq. 10)           device/budget.py
    payload  -> UploadRequest        what crosses the wire                    PayloadStep: `ImagePayload`
    link     -> Future[CloudReply]   in-process or HTTP                       device/link.py, device/http_link.py
    fuse     -> final label map      what to show for an answered frame       FuseStep: `CloudLabel`
    state    -> U (and later weights) the cloud's updates to the device       DeviceRuntime._apply_u

Offline sweeps plug replaying steps into the same runtime (eval/replay.py: a cached model step, a
payload of the recorded size, a cloud that answers from its cache), so a new stage written here is
measured by every path at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from tandemseg.data.tensors import to_tensor
from tandemseg.errors import DataError
from tandemseg.models.blocks import resize
from tandemseg.wire.messages import UploadRequest
from tandemseg.wire.payload import Codec, encode_frame, pack_probs, parse_codec


@dataclass
class DeviceOutput:
    probs: torch.Tensor  # (C, h, w) coarse probabilities at /4 of the downsampled input
    pred: np.ndarray | None  # (H, W) uint8 device prediction; None when a replay scores frames from its cache
    device_ms: float
    size: tuple[int, int]  # (H, W) of the frame: the size every label map of this frame has


class ModelStep(Protocol):
    def run(self, frame: np.ndarray | None, frame_id: int) -> DeviceOutput:
        """The device's view of frame `frame_id` (a replaying step reads it by id and takes frame=None)."""
        ...


class PayloadStep(Protocol):
    def build(self, frame: np.ndarray | None, frame_id: int, device: DeviceOutput, u_version: int) -> UploadRequest:
        """The upload for a frame the controller chose to send."""
        ...


class FuseStep(Protocol):
    def fuse(self, device: DeviceOutput, cloud_label: np.ndarray) -> np.ndarray:
        """The final (H, W) uint8 map of an answered frame from the device's view and the cloud's label map."""
        ...


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
    return DeviceOutput(probs, pred, (time.perf_counter() - t0) * 1e3, (frame.shape[0], frame.shape[1]))


class LiveModel:
    """The device network on the frame itself."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()

    def run(self, frame: np.ndarray | None, frame_id: int) -> DeviceOutput:
        check_frame(frame)
        return run_device(self.model, frame)


class ImagePayload:
    """The frame encoded with an image codec (PNG/JPEG/WebP), plus the device's coarse probabilities when DCAM
    (ACDC eq. 13-14) needs them in the cloud."""

    def __init__(self, codec: str | Codec = "png", device_id: str = "dev0", send_device_probs: bool = False) -> None:
        self.codec = parse_codec(codec) if isinstance(codec, str) else codec
        self.device_id = device_id
        self.send_device_probs = send_device_probs

    def build(self, frame: np.ndarray | None, frame_id: int, device: DeviceOutput, u_version: int) -> UploadRequest:
        check_frame(frame)
        request = UploadRequest(self.device_id, frame_id, encode_frame(frame, self.codec), str(self.codec),
                                frame.shape[0], frame.shape[1], u_version=u_version)
        attach_probs(request, device, self.send_device_probs)
        return request


def attach_probs(request: UploadRequest, device: DeviceOutput, send: bool) -> None:
    """Add the device's uint8-quantised coarse probabilities (what DCAM reads) to an upload when `send`."""
    if send:
        request.device_probs, request.device_probs_shape = pack_probs(device.probs.numpy())


class CloudLabel:
    """No fusion: an answered frame shows the cloud's map (ACDC Alg. 1 line 5). The fusion issue adds CFE here."""

    def fuse(self, device: DeviceOutput, cloud_label: np.ndarray) -> np.ndarray:
        return cloud_label.astype(np.uint8)
