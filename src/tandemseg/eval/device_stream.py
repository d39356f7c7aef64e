"""Streaming a dataset through a DeviceRuntime whose link may be slow or fail (the `tandemseg device` loop).

Unlike eval/collab.py's runtime path (which finishes each frame before the next, as an in-process link
allows), frames here do not wait for the network: each frame's upload is in flight while later frames
are segmented. A frame is finished (its final map fixed) as soon as its reply is there, when its
deadline passes, or when more than `max_lag` frames wait, whichever comes first; a late or failed reply
means the device's own map (runtime.finish falls back). `max_lag=0` finishes each frame before the next,
which is what collab does, so both give the same numbers when nothing falls back.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tandemseg.data.base import SegDataset
from tandemseg.device.runtime import DeviceRuntime, FrameHandle, FrameResult
from tandemseg.errors import TandemsegError
from tandemseg.eval.metrics import ConfusionMatrix


@dataclass(frozen=True)
class StreamConfig:
    deadline_s: float = 2.0  # a frame waits at most this long (after its device result) for the cloud's
    max_lag: int = 8  # frames awaiting the cloud before the oldest is finished; 0 = finish each frame at once
    fps: float = 0.0  # pace the stream at this frame rate (0 = as fast as the device runs)


@dataclass
class _Pending:
    handle: FrameHandle
    label: np.ndarray
    deadline: float


class StreamRun:
    """Accumulates the results of one stream (confusion matrices, provenance, U updates)."""

    def __init__(self, runtime: DeviceRuntime, num_classes: int, ignore_index: int) -> None:
        self.runtime = runtime
        self.device_cm = ConfusionMatrix(num_classes, ignore_index)
        self.final_cm = ConfusionMatrix(num_classes, ignore_index)
        self.results: list[FrameResult] = []
        self.u_updates = 0

    def finish(self, p: _Pending, timeout: float) -> None:
        before = self._u_version()
        result = self.runtime.finish(p.handle, timeout=max(0.0, timeout))
        self.u_updates += int(self._u_version() > before)
        self.final_cm.update(result.label, p.label)
        self.results.append(result)

    def _u_version(self) -> int:
        u = self.runtime.uncertainty
        return u.version if u is not None else 0


def run_stream(
    dataset: SegDataset, runtime: DeviceRuntime, frames: int, cfg: StreamConfig = StreamConfig(),
    on_frame: Callable[[], None] | None = None,
) -> dict:
    """Every frame gets a final map; returns mIoUs, provenance, bytes, latencies and the upload mask."""
    classes = dataset.classes
    run = StreamRun(runtime, classes.num_classes, classes.ignore_index)
    pending: deque[_Pending] = deque()
    start = time.perf_counter()
    for i in range(frames):
        if cfg.fps > 0:
            delay = start + i / cfg.fps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        s = dataset[i]
        handle = runtime.process(s.image, i)
        run.device_cm.update(handle.device.pred, s.label)
        pending.append(_Pending(handle, s.label, time.perf_counter() + cfg.deadline_s))
        _drain(run, pending, cfg.max_lag)
        if on_frame:
            on_frame()
    while pending:  # the end of the stream: every frame still gets its answer, within its deadline
        p = pending.popleft()
        run.finish(p, p.deadline - time.perf_counter())
    wall = time.perf_counter() - start
    return summarise(run, frames, wall)


def _drain(run: StreamRun, pending: deque[_Pending], max_lag: int) -> None:
    """Finish frames whose reply arrived or whose deadline passed; then the oldest beyond max_lag."""
    now = time.perf_counter()
    for p in [p for p in pending if p.handle.future is None or p.handle.future.done() or p.deadline <= now]:
        pending.remove(p)
        run.finish(p, 0.0)
    while len(pending) > max_lag:
        p = pending.popleft()
        run.finish(p, p.deadline - time.perf_counter())


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def summarise(run: StreamRun, frames: int, wall: float) -> dict:
    results = sorted(run.results, key=lambda r: r.frame_id)
    provenance = Counter(r.provenance for r in results)
    uploaded = [r for r in results if r.uploaded]
    cloud = [r for r in results if r.provenance == "cloud"]
    fallbacks = {k: v for k, v in provenance.items() if k.startswith("fallback")}
    device_ms = _median([r.device_ms for r in results])
    score_ms = _median([r.score_ms for r in results])
    return {
        "frames": frames, "answered": len(results), "device_miou": run.device_cm.miou(), "collab_miou": run.final_cm.miou(),
        "mask": np.array([r.uploaded for r in results]),
        "uploads": len(uploaded), "upload_rate": len(uploaded) / max(frames, 1),
        "from_cloud": len(cloud), "cloud_frames": [r.frame_id for r in cloud], "fallbacks": sum(fallbacks.values()), "fallback_reasons": fallbacks, "provenance": dict(provenance),
        "u_updates_applied": run.u_updates,
        "u_version": run.runtime.uncertainty.version if run.runtime.uncertainty is not None else None,
        "bytes_up_per_frame": sum(r.bytes_up for r in results) / max(frames, 1),
        "bytes_down_per_frame": sum(r.bytes_down for r in results) / max(frames, 1),
        "bytes_up_per_upload": (sum(r.bytes_up for r in uploaded) / len(uploaded)) if uploaded else None,
        "device_ms": device_ms, "score_ms": score_ms, "score_overhead": (score_ms / device_ms) if device_ms else None,
        "encode_ms": _median([r.encode_ms for r in uploaded]), "cloud_ms": _median([r.cloud_ms for r in cloud]),
        "wait_ms": _median([r.wait_ms for r in uploaded]), "wall_s": wall, "stream_fps": frames / wall if wall > 0 else None,
    }


def run_device_client(
    server: str, token: str, data: str, split: str, shift: str, device_ckpt, uncertainty, policy: str, rate: float,
    controller: str, bytes_per_s: float | None, fps: float, codec: str, dcam: bool, limit: int | None, seed: int,
    retry, stream: StreamConfig, cloud_ckpt=None, progress_bar=None, feature_codec=None, fuse_factory=None,
) -> dict:
    """`tandemseg device`: the collab runtime with the HTTP link; returns collab's keys plus the network's figures.
    `fuse_factory(device_model, classes)` builds the fuse step (CFE) once the device model is loaded."""
    from tandemseg.codec.checkpoint import load_codec
    from tandemseg.data.spec import open_dataset
    from tandemseg.device.budget import BudgetSpec, check_rate
    from tandemseg.device.http_link import HttpLink
    from tandemseg.device.steps import make_device_steps
    from tandemseg.device.uncertainty import UncertaintyMatrix
    from tandemseg.eval import replay as R
    from tandemseg.models.checkpoint import load_checkpoint

    dataset = open_dataset(data, split, shift, seed=seed)
    dev = load_checkpoint(device_ckpt, expect_kind="device", expect_classes=dataset.classes)
    um = UncertaintyMatrix.load(uncertainty, expect_classes=dataset.classes) if uncertainty else None
    check_rate(rate)
    run = R.PolicyRun(policy, BudgetSpec(rate=rate, mode=controller, bytes_per_s=bytes_per_s, fps=fps), um, seed)
    pol, ctrl, u = run.make()  # the controller from the budget alone, as collab's in-process path builds it
    link = HttpLink(server, token, retry=retry, seed=seed)
    try:
        device_id = link.whoami()
        health = link.health()
        if health["classes"] != dataset.classes.num_classes:
            raise TandemsegError(f"the server's model predicts {health['classes']} classes but {data} has {dataset.classes.num_classes}")
        if u is not None:
            link.put_u(u.u)  # the cloud's DCAM starts from the U this device starts from (version 0)
        codec_model = load_codec(feature_codec, device=dev.model).codec if feature_codec else None
        model_step, payload = make_device_steps(dev.model, codec, device_id, dcam, codec_model)
        fuse = fuse_factory(dev.model, dataset.classes) if fuse_factory else None
        runtime = DeviceRuntime(model_step, pol, ctrl, link, payload=payload, uncertainty=u, fuse=fuse)
        n = len(dataset) if limit is None else min(limit, len(dataset))
        if progress_bar is None:
            result = run_stream(dataset, runtime, n, stream)
        else:
            with progress_bar() as bar:
                task = bar.add_task(f"device {device_id}", total=n, info="")
                result = run_stream(dataset, runtime, n, stream, on_frame=lambda: bar.advance(task))
    finally:
        link.close()
    mask = result.pop("mask")
    target = run.target_rate(ctrl.summary())
    reference = (_reference_metrics(dataset, dev.model, cloud_ckpt, codec, limit, dcam, mask, target, result["collab_miou"], codec_model)
                 if cloud_ckpt else {})
    return {
        "server": server, "device_id": device_id, "data": data, "split": split, "shift": shift, "codec": codec,
        "feature_codec": str(feature_codec) if feature_codec else None,
        "device_ckpt": str(device_ckpt), "cloud_ckpt": str(cloud_ckpt) if cloud_ckpt else None,
        "uncertainty": str(uncertainty) if uncertainty else None, "u_meta": um.meta if um else None, "dcam": dcam,
        "policy": policy, "controller": ctrl.summary(), "target_rate": target, "uploaded_frames": np.flatnonzero(mask).tolist(),
        "rate_error": result["upload_rate"] - target, "stream": {"deadline_s": stream.deadline_s, "max_lag": stream.max_lag, "fps": stream.fps},
        "cloud_miou": None, "oracle_miou": None, "gain_captured": None, **reference, **result,
        **{k: v for k, v in link.stats.summary().items() if k.startswith("rtt_ms")},
        "link": link.stats.summary(),
    }


def _reference_metrics(
    dataset, device_model, cloud_ckpt, codec: str, limit, send: bool, mask: np.ndarray, target_rate: float, collab_miou: float,
    feature_codec=None,
) -> dict:
    """cloud mIoU, the greedy oracle at the target count round(target_rate * N) and the gain this run captured
    (with the mIoU it reached over HTTP, fallbacks included), from a local copy of the cloud model."""
    from tandemseg.eval import cache as K
    from tandemseg.eval import collab as C
    from tandemseg.eval import oracle as O
    from tandemseg.models.checkpoint import load_checkpoint

    cloud = load_checkpoint(cloud_ckpt, expect_kind="cloud", expect_classes=dataset.classes)
    cache = K.build_cache(dataset, device_model, cloud.model, codec, limit, send, feature_codec=feature_codec)
    m = C.selection_metrics(cache, mask, target_rate)
    span = m["oracle_miou"] - m["device_miou"]
    return {k: m[k] for k in ("cloud_miou", "oracle_miou", "target_uploads", "upload_rate_by_condition")} | {
        "oracle": O.ORACLE, "gain_captured": (collab_miou - m["device_miou"]) / span if span > 1e-12 else None,
        "collab_miou_if_all_answered": m["collab_miou"], "cloud_gflops": cache.info.get("cloud_gflops"),
        "device_gflops": cache.info.get("device_gflops"),
    }
