"""The device pipeline's steps, one small interface each (docs/ARCHITECTURE.md, "one runtime").

`DeviceRuntime` (device/runtime.py) is the only place a frame is processed; it chains

    model    -> DeviceOutput         run the device network (ACDC eq. 4)      ModelStep: `LiveModel`
    score    -> float                the upload policy (eq. 9, entropy, ...)  device/policies.py
    decide   -> bool                 the budget controller (eq. 10)           device/budget.py
    payload  -> UploadRequest        what crosses the wire                    PayloadStep: `ImagePayload`, `FeaturePayload` (JD)
    link     -> Future[CloudReply]   in-process or HTTP                       device/link.py, device/http_link.py
    fuse     -> final label map      what every frame shows                   FuseStep: `CloudLabel`, `FusionStep` (CFE)
    state    -> U (and later weights) the cloud's updates to the device       DeviceRuntime._apply_u

Offline sweeps plug replaying steps into the same runtime (eval/replay.py: a cached model step, a
payload of the recorded size, a cloud that answers from its cache), so a new stage written here is
measured by every path at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn

from tandemseg.codec.bitstream import encode_features
from tandemseg.codec.model import FeatureCodec
from tandemseg.data.tensors import to_tensor
from tandemseg.errors import DataError, SpecError
from tandemseg.exits.checkpoint import load_mess
from tandemseg.exits.costs import CostTable
from tandemseg.exits.search import path_costs
from tandemseg.fusion.engine import CollaborativeFusion
from tandemseg.models.blocks import resize
from tandemseg.wire.messages import CloudReply, UploadRequest
from tandemseg.wire.payload import FEATURES, Codec, encode_frame, pack_probs, parse_codec, unpack_probs


@dataclass
class DeviceOutput:
    probs: torch.Tensor  # (C, h, w) coarse probabilities at /4 of the downsampled input
    pred: np.ndarray | None  # (H, W) uint8 device prediction; None when a replay scores frames from its cache
    device_ms: float
    size: tuple[int, int]  # (H, W) of the frame: the size every label map of this frame has
    features: dict[int, torch.Tensor] = field(default_factory=dict)  # stage index -> (1, C, h, w) kept for a payload
    exit: str = "final"  # the MESS exit that answered the frame ('final': the whole network ran)
    answered_early: bool = False  # True: an early exit was confident; the frame is done on the device, never uploaded
    gflops: float | None = None  # what the device spent on the frame, when the model step knows (MESS cost table)
    image: np.ndarray | None = None  # (H, W, 3) the frame itself (a reference), for steps that read full-resolution evidence (CFE)


class ModelStep(Protocol):
    def run(self, frame: np.ndarray | None, frame_id: int) -> DeviceOutput:
        """The device's view of frame `frame_id` (a replaying step reads it by id and takes frame=None)."""
        ...


class PayloadStep(Protocol):
    def build(self, frame: np.ndarray | None, frame_id: int, device: DeviceOutput, u_version: int) -> UploadRequest:
        """The upload for a frame the controller chose to send."""
        ...


class FuseStep(Protocol):
    wants_cloud_probs: bool  # uploads ask the cloud to send its class probabilities back (CFE fuses them)

    def local(self, device: DeviceOutput) -> np.ndarray | None:
        """The final (H, W) uint8 map of a frame the cloud did not answer (None when a replay keeps no maps)."""
        ...

    def fuse(self, device: DeviceOutput, cloud_label: np.ndarray, reply: CloudReply) -> np.ndarray:
        """The final (H, W) uint8 map of an answered frame from the device's view and the cloud's reply."""
        ...


def check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise DataError(f"the device runtime takes RGB uint8 frames of shape (H, W, 3), got {got}")


@torch.inference_mode()
def run_device(model: nn.Module, frame: np.ndarray, keep: tuple[int, ...] = ()) -> DeviceOutput:
    """Eq. 4: y_coarse = M_d(f_down(x)), upsampled; exactly what `model(frame).argmax` gives, plus the coarse probs
    and, for the stage indices in `keep`, the encoder's outputs there (one pass: a feature payload reuses them)."""
    t0 = time.perf_counter()
    x = to_tensor([frame])  # (1, 3, H, W)
    if keep:
        feats = model.forward_features(model.encoder_input(x))  # every stage, (1, C_i, h_i, w_i)
        logits, kept = model.decode(feats), {i: feats[i] for i in keep}  # (1, C, h, w)
    else:
        logits, kept = model.forward_coarse(x), {}
    pred = resize(logits, x.shape[-2:]).argmax(1)[0].to(torch.uint8).numpy()  # (H, W)
    probs = logits[0].float().softmax(0)  # (C, h, w)
    return DeviceOutput(probs, pred, (time.perf_counter() - t0) * 1e3, (frame.shape[0], frame.shape[1]), kept, image=frame)


class LiveModel:
    """The device network on the frame itself; `keep` names encoder stages whose outputs a payload needs."""

    def __init__(self, model: nn.Module, keep: tuple[int, ...] = ()) -> None:
        self.model = model.eval()
        self.keep = tuple(keep)

    def run(self, frame: np.ndarray | None, frame_id: int) -> DeviceOutput:
        check_frame(frame)
        return run_device(self.model, frame, self.keep)


class ExitModel:
    """MESS in the runtime (sec. 5): the searched configuration of a multi-exit device network. Input-dependent:
    the first early exit whose image-level confidence (eq. 7-9) clears its threshold answers the frame, and the
    stages past it are never computed; otherwise the final exit answers and the frame is an upload candidate.
    Budgeted: the one chosen exit answers every frame."""

    def __init__(self, net: nn.Module, config, gflops_at: dict[str, float] | None = None) -> None:
        self.net, self.config = net.eval(), config
        self.gflops_at = gflops_at or {}

    @torch.inference_mode()
    def run(self, frame: np.ndarray | None, frame_id: int) -> DeviceOutput:
        check_frame(frame)
        t0 = time.perf_counter()
        x = to_tensor([frame])  # (1, 3, H, W)
        if self.config.setting == "input_dependent":
            res = self.net.input_dependent(x, list(self.config.exits), self.config.thresholds, self.config.pixel_thresholds)
            logits, key = res.logits, res.exits[0]  # (1, C, H, W)
        else:
            key = self.config.path()[0] if self.config.setting == "budgeted" else self.config.path()[-1]
            logits = self.net.forward_exit(x, key)  # (1, C, H, W)
        h, w = frame.shape[:2]
        pred = logits.argmax(1)[0].to(torch.uint8).numpy()  # (H, W)
        coarse = resize(logits, (max(1, h // 8), max(1, w // 8)))  # (1, C, H/8, W/8): the scale the policies read
        return DeviceOutput(coarse[0].float().softmax(0), pred, (time.perf_counter() - t0) * 1e3, (h, w),
                            exit=key, answered_early=key != "final", gflops=self.gflops_at.get(key), image=frame)


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


class FeaturePayload:
    """JD (sec. 3.1-3.2): the device encoder's features at the codec's split stage, range-coded with the learned
    hyperprior into one container (codec/container.py: codec id, device hash, stage, shapes, CRC) instead of an
    image. The model step must keep that stage (`LiveModel(model, keep=(split_index,))`; see `feature_steps`)."""

    def __init__(self, codec: FeatureCodec, device_id: str = "dev0", send_device_probs: bool = False) -> None:
        if codec.device_hash is None:
            raise ValueError("the feature codec has no device hash; load it with load_codec(..., device=model)")
        self.codec = codec.eval()
        self.device_id = device_id
        self.send_device_probs = send_device_probs

    @property
    def split_index(self) -> int:
        return self.codec.cfg.split_index

    def build(self, frame: np.ndarray | None, frame_id: int, device: DeviceOutput, u_version: int) -> UploadRequest:
        z = device.features.get(self.split_index)
        if z is None:
            raise ValueError(f"the model step kept no features at stage {self.split_index}: build it with LiveModel(model, keep=({self.split_index},))")
        container = encode_features(self.codec, z, device.size)[0]
        request = UploadRequest(self.device_id, frame_id, container, FEATURES, device.size[0], device.size[1], u_version=u_version)
        attach_probs(request, device, self.send_device_probs)
        return request


def feature_steps(model: nn.Module, codec: FeatureCodec, device_id: str = "dev0", send_device_probs: bool = False) -> tuple[LiveModel, FeaturePayload]:
    """The model step and payload step of a device that uploads JD features instead of images."""
    payload = FeaturePayload(codec, device_id, send_device_probs)
    return LiveModel(model, keep=(payload.split_index,)), payload


def make_device_steps(model: nn.Module, codec: str = "png", device_id: str = "dev0", send_device_probs: bool = False,
                      feature_codec: FeatureCodec | None = None, exit_model: ExitModel | None = None) -> tuple[ModelStep, PayloadStep]:
    """The model and payload steps for an upload codec: an image codec (png | jpeg:Q | webp:Q | avif:Q), or `features`
    (JD), which needs the feature codec trained for this device. `exit_model` (MESS) replaces the plain model step."""
    if codec.strip().lower() == FEATURES:
        if feature_codec is None:
            raise SpecError("codec 'features' uploads JD bitstreams: give the feature codec checkpoint (--feature-codec DIR)")
        if exit_model is not None:
            raise SpecError("a MESS device uploads images: its exits do not keep the codec's split features (drop --mess-ckpt or --codec features)")
        return feature_steps(model, feature_codec, device_id, send_device_probs)
    return exit_model or LiveModel(model), ImagePayload(codec, device_id, send_device_probs)


def load_exit_model(folder) -> ExitModel:
    """The searched MESS configuration of a checkpoint (`tandemseg exits search`) as the runtime's model step."""
    ck = load_mess(folder)
    if ck.card["kind"] != "device":
        raise SpecError(f"{folder} is a multi-exit {ck.card['kind']} model; --mess-ckpt needs a device one (`exits train --base-ckpt` a device checkpoint)")
    config = ck.configuration
    if config is None:
        raise SpecError(f"{folder} has no searched configuration; run `tandemseg exits search --ckpt {folder} ...` first")
    path = list(config.path())
    table = CostTable.from_json(ck.card["mess"]["search"]["cost_tables"]["gflops"])
    costs = path_costs(table, path, [ck.net.stage_of(k) for k in path], decide=config.setting == "input_dependent")
    return ExitModel(ck.net, config, dict(zip(path, costs.tolist(), strict=True)))


class CloudLabel:
    """No fusion: an answered frame shows the cloud's map, every other frame the device's (ACDC Alg. 1 line 5)."""

    wants_cloud_probs = False

    def local(self, device: DeviceOutput) -> np.ndarray | None:
        return device.pred

    def fuse(self, device: DeviceOutput, cloud_label: np.ndarray, reply: CloudReply) -> np.ndarray:
        return cloud_label.astype(np.uint8)


FUSION_MODES = ("none", "refine", "cfe")


class FusionStep:
    """ACDC's CFE in the runtime (sec. 3.2.3, fusion/engine.py). Every frame the device shows is its coarse map
    refined at the eq. 12 mask (eq. 15); with mode `cfe` an answered frame fuses the refined map with the cloud's
    probabilities (which the upload asks for), with mode `refine` it shows the cloud's map as without CFE."""

    def __init__(self, fusion: CollaborativeFusion, mode: str = "cfe") -> None:
        if mode not in ("refine", "cfe"):
            raise SpecError(f"fusion mode {mode!r} needs no fusion step or is unknown; valid: {', '.join(FUSION_MODES)}")
        self.fusion, self.mode = fusion.eval(), mode
        self.wants_cloud_probs = mode == "cfe"

    @torch.inference_mode()
    def _fused_label(self, device: DeviceOutput, cloud_probs: np.ndarray) -> np.ndarray:
        cloud = torch.from_numpy(cloud_probs)[None]  # (1, C, hc, wc)
        logits = self.fusion(device.probs[None], to_tensor([device.image]), cloud)  # (1, C, H, W)
        return logits.max(1).indices[0].to(torch.uint8).numpy()  # (H, W); max(1): faster than argmax(1) on CPU here

    @torch.inference_mode()
    def local(self, device: DeviceOutput) -> np.ndarray | None:
        if device.image is None or device.pred is None:
            return device.pred  # a replay: the cache's matrices already hold the refined maps
        return self.fusion.local_label(device.probs[None], device.image, device.pred)

    def fuse(self, device: DeviceOutput, cloud_label: np.ndarray, reply: CloudReply) -> np.ndarray:
        if self.mode == "refine" or device.image is None or reply.probs is None or reply.probs_shape is None:
            return cloud_label.astype(np.uint8)  # a cloud that sent no probabilities still answered with its map
        if reply.probs_shape[0] != self.fusion.cfg.num_classes:
            raise DataError(f"the reply's probabilities have {reply.probs_shape[0]} classes but this CFE fuses "
                            f"{self.fusion.cfg.num_classes}; the cloud serves another label set")
        return self._fused_label(device, unpack_probs(reply.probs, reply.probs_shape))


def make_fuse_step(mode: str, fusion: CollaborativeFusion | None) -> FuseStep:
    """`--fusion none|refine|cfe`: none shows the cloud's or the device's map; the others need a CFE checkpoint."""
    key = mode.strip().lower()
    if key not in FUSION_MODES:
        raise SpecError(f"unknown fusion mode {mode!r}; valid: {', '.join(FUSION_MODES)}")
    if key == "none":
        return CloudLabel()
    if fusion is None:
        raise SpecError(f"--fusion {key} needs a CFE checkpoint (--fusion-ckpt DIR, from `tandemseg fusion train`)")
    return FusionStep(fusion, key)
