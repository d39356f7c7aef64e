"""CEMA's comparison (paper 002) in the one runtime: a device model meets a continual stream of shifts, and adapts
by one of

    none         the device model as shipped
    bn, tent     device-side baselines (device/local_adapt.py); nothing uploaded
    cema         CEMA: the `cema` entropy band picks uploads; the cloud adapts its foundation model, distils into
                 the device's student and pushes the adapted tensors back (cloud/adaptation, device/weights.py)
    upload-all   the same cloud loop fed with every frame (CEMA's reference point)

Online mIoU scores every frame with the device's own map under the weights in force when the frame arrived
(never the cloud's reply); `final_device_miou` replays the same frames once more with the weights the stream
ended with. Every run adapts its own copy of the device model.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import nn

from tandemseg.cloud.adaptation.config import AdaptConfig
from tandemseg.cloud.adaptation.service import AdaptationService
from tandemseg.cloud.service import CloudService, ModelSegmenter
from tandemseg.data.base import SegDataset
from tandemseg.device.budget import EligibleFrames
from tandemseg.device.link import CloudLink, InProcessLink
from tandemseg.device.local_adapt import FrameNormModel, TentModel, local_step
from tandemseg.device.policies import make_policy
from tandemseg.device.runtime import DeviceRuntime
from tandemseg.device.steps import LiveModel
from tandemseg.device.weights import WeightUpdater
from tandemseg.errors import SpecError
from tandemseg.eval.metrics import ConfusionMatrix, miou_of
from tandemseg.exits.calibrate import frame_confusion
from tandemseg.heap import HeapTrimmer
from tandemseg.wire.weights import encode_update

ADAPT_METHODS = ("none", "bn", "tent", "cema", "upload-all")
CLOUD_METHODS = ("cema", "upload-all")


@dataclass
class AdaptSetup:
    """What a run needs besides the stream."""

    device_model: nn.Module
    cloud_model: nn.Module | None = None  # needed by the cloud methods (in process)
    config: AdaptConfig | None = None
    device_id: str = "dev0"
    codec: str = "png"
    local_lr: float = 1e-4  # tent's learning rate on the device
    cema_quantiles: tuple[float, float] | None = (0.4, 0.8)  # the cema filter's running band; None: CEMA's fractions of ln C
    window: int = 50  # frames per point of the online-mIoU curve


def check_method(method: str) -> str:
    if method not in ADAPT_METHODS:
        raise SpecError(f"unknown adaptation method {method!r}; valid: {', '.join(ADAPT_METHODS)}")
    return method


def build_runtime(method: str, setup: AdaptSetup, classes, link: CloudLink | None = None) -> tuple[DeviceRuntime, nn.Module, AdaptationService | None]:
    """(runtime, the model it adapts, the in-process adaptation service or None)."""
    check_method(method)
    model = copy.deepcopy(setup.device_model).eval()
    config = setup.config or AdaptConfig()
    if method not in CLOUD_METHODS:
        step = LiveModel(model) if method == "none" else local_step(model, method, lr=setup.local_lr)
        return DeviceRuntime(step, make_policy("none"), EligibleFrames(), None, device_id=setup.device_id), model, None
    service = None
    if link is None:
        if setup.cloud_model is None:
            raise SpecError(f"method {method!r} needs the cloud model (--cloud-ckpt) or a server (--server)")
        service = AdaptationService(setup.cloud_model, setup.device_model, classes.num_classes, setup.config, synchronous=True)
        link = InProcessLink(CloudService(ModelSegmenter(setup.cloud_model), classes, adaptation=service))
    policy = make_policy("cema", quantiles=setup.cema_quantiles) if method == "cema" else make_policy("all")
    weights = WeightUpdater(model, setup.device_id, config.params)
    step = FrameNormModel(model) if config.student_norm == "frame" else LiveModel(model)  # the normalisation the student learnt under
    runtime = DeviceRuntime(step, policy, EligibleFrames(), link, codec=setup.codec, device_id=setup.device_id, weights=weights)
    return runtime, model, service


def run_adaptation(method: str, stream: SegDataset, setup: AdaptSetup, link: CloudLink | None = None,
                   on_frame: Callable[[int], None] | None = None) -> dict:
    """Drive the stream through the runtime; the figures of `tandemseg adapt --json`."""
    classes = stream.classes
    runtime, model, service = build_runtime(method, setup, classes, link)
    device_ms, uploads, bytes_up, bytes_down = [], 0, 0, 0
    frame_cms = np.zeros((len(stream), classes.num_classes, classes.num_classes), dtype=np.int64)  # every mIoU below derives from it
    conditions = [_condition(stream, i) for i in range(len(stream))]
    trim = HeapTrimmer()
    for i in range(len(stream)):
        sample = stream[i]
        handle = runtime.process(sample.image, i)
        # the device's own map, under the weights in force now
        frame_cms[i] = frame_confusion(handle.device.pred, sample.label, classes.num_classes, classes.ignore_index)
        result = runtime.finish(handle)
        device_ms.append(result.device_ms)
        uploads += int(result.uploaded)
        bytes_up += result.bytes_up
        bytes_down += result.bytes_down + int(result.extra.get("update_bytes", 0))
        trim.tick()
        if on_frame:
            on_frame(i)
    final = final_miou(runtime.model_step, stream)
    weights = runtime.weights.stats if runtime.weights is not None else None
    runtime.close()
    frames = len(stream)
    source = getattr(stream, "source_index", lambda i: i)
    return {
        "frame_cms": frame_cms, "source_frames": [int(source(i)) for i in range(frames)],
        "method": method, "frames": frames, "device_miou": miou_of(frame_cms.sum(0)), "final_device_miou": final,
        "uploads": uploads, "upload_rate": uploads / frames if frames else 0.0, "bytes_up": bytes_up, "bytes_down": bytes_down,
        "updates_applied": weights.applied if weights else 0, "updates_rejected": weights.rejected if weights else 0,
        "updates_rolled_back": weights.rolled_back if weights else 0,
        "per_condition": {c: miou_of(frame_cms[[j for j, x in enumerate(conditions) if x == c]].sum(0)) for c in dict.fromkeys(conditions)},
        "curve": {"window": setup.window, "miou": [miou_of(frame_cms[k:k + setup.window].sum(0)) for k in range(0, frames, setup.window)]},
        "device_ms_median": statistics.median(device_ms) if device_ms else 0.0,
        "device_ms_mean": float(np.mean(device_ms)) if device_ms else 0.0,
        "adaptation": service.stats() if service is not None else None,
        "config": (setup.config or AdaptConfig()).to_json() if method in CLOUD_METHODS else {"local_lr": setup.local_lr},
        "cema_quantiles": list(setup.cema_quantiles) if method == "cema" and setup.cema_quantiles else None,
    }


def final_miou(step, stream: SegDataset) -> float:
    """The same frames once more under the weights the stream ended with, through the run's own inference (a Tent
    step becomes inference alone: per-frame statistics, no more updates)."""
    step = FrameNormModel(step.model) if isinstance(step, TentModel) else step
    cm = ConfusionMatrix(stream.classes.num_classes, stream.classes.ignore_index)
    trim = HeapTrimmer()
    for i in range(len(stream)):
        sample = stream[i]
        cm.update(step.run(sample.image, i).pred, sample.label)
        trim.tick()
    return cm.miou()


def _condition(stream: SegDataset, i: int) -> str:
    at = getattr(stream, "condition_at", None)
    shift = at(i) if at is not None else None
    return "clean" if shift is None else str(shift)


def device_step_latency(device_model: nn.Module, frame: np.ndarray, runs: int = 20, warmup: int = 3,
                        update: tuple[int, dict] | None = None) -> dict[str, float]:
    """Median ms per frame of each device-side model step, timed round-robin (one frame of each in turn, so load
    changes hit all alike): the shipped model, per-frame BatchNorm statistics (bn; CEMA's device runs this way),
    Tent; and, with `update` = (version, tensors), the ms to check and swap in one weight update."""
    steps = {"none": LiveModel(copy.deepcopy(device_model).eval()), "bn": FrameNormModel(copy.deepcopy(device_model).eval()),
             "tent": TentModel(copy.deepcopy(device_model).eval())}
    for step in steps.values():
        for _ in range(warmup):
            step.run(frame, 0)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(runs):
        for name, step in steps.items():
            times[name].append(step.run(frame, 0).device_ms)
    out = {f"{k}_ms": statistics.median(v) for k, v in times.items()}
    if update is not None:
        version, tensors = update
        swaps = []
        for v in range(1, runs + 1):
            updater = WeightUpdater(copy.deepcopy(device_model), "bench")
            message = encode_update("bench", version + v, updater.base_hash, tensors)
            t0 = time.perf_counter()
            updater.offer(message)
            swaps.append((time.perf_counter() - t0) * 1e3)
        out["update_apply_ms"] = statistics.median(swaps)
        out["update_bytes"] = len(message.payload)
    return out
