"""The per-frame cache behind every offline sweep: the device and the cloud run ONCE per frame.

`build_cache` drives the one runtime (device/runtime.py) with every frame uploaded through the in-process
link, and keeps what each frame gave: the device's coarse probabilities, per-frame confusion matrices of
the device's and the cloud's maps, the cloud's maps (DCAM's pseudo-labels), payload and reply sizes and
latencies. Sweeps then replay policies over it through the same runtime (eval/replay.py). The cache is
keyed by the run's identity (checkpoint paths, sizes and mtimes; data, split, shift, codec) so reruns
after a policy change skip the slow part.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tandemseg.cloud.service import CloudService, ModelSegmenter
from tandemseg.codec.model import FeatureCodec
from tandemseg.data.base import Sample, SegDataset
from tandemseg.data.classes import ClassTable
from tandemseg.device.budget import FixedSelection
from tandemseg.device.link import InProcessLink
from tandemseg.device.policies import make_policy
from tandemseg.device.runtime import DeviceRuntime, FrameHandle, FrameResult
from tandemseg.device.steps import FuseStep, make_device_steps
from tandemseg.errors import DataError
from tandemseg.eval.boundary import boundary_counts
from tandemseg.eval.metrics import ConfusionMatrix
from tandemseg.heap import HeapTrimmer
from tandemseg.models.flops import count_gflops
from tandemseg.wire.payload import parse_upload_codec

CACHE_VERSION = 3  # 2: per-frame source index (groups) for the bootstrap; 3: boundary counts, the fuse step




@dataclass
class CollabCache:
    """Everything the sweeps need, one row per frame (N frames, C classes)."""

    classes: ClassTable
    probs: list[torch.Tensor]  # N x (C, h, w) device coarse probabilities
    device_cm: np.ndarray  # (N, C, C) int64
    cloud_cm: np.ndarray  # (N, C, C) int64
    cloud_pred: list[np.ndarray]  # N x (H, W) uint8, what the cloud returned (DCAM's pseudo-labels)
    bytes_up: np.ndarray  # (N,) payload (+ device probs when sent) bytes if uploaded
    bytes_down: np.ndarray  # (N,) reply bytes if uploaded
    device_ms: np.ndarray  # (N,)
    cloud_ms: np.ndarray  # (N,)
    conditions: list[str]  # N shift conditions (streams vary per frame)
    info: dict = field(default_factory=dict)
    groups: np.ndarray | None = None  # (N,) source frame of each frame (repeated schedules); None: all distinct
    device_bf: np.ndarray | None = None  # (N, 4) boundary counts of the device's final map (eval/boundary.py)
    cloud_bf: np.ndarray | None = None  # (N, 4) boundary counts of an answered frame's final map

    @property
    def frames(self) -> int:
        return len(self.probs)

    @property
    def sources(self) -> np.ndarray:
        """(N,) the bootstrap's resampling unit: the labelled frame each stream frame shows."""
        return np.arange(self.frames) if self.groups is None else np.asarray(self.groups)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp, **_arrays("probs", [p.numpy() for p in self.probs]), device_cm=self.device_cm, cloud_cm=self.cloud_cm,
            **_arrays("cloud_pred", self.cloud_pred), bytes_up=self.bytes_up, bytes_down=self.bytes_down,
            device_ms=self.device_ms, cloud_ms=self.cloud_ms, groups=self.sources,
            **({} if self.device_bf is None else {"device_bf": self.device_bf, "cloud_bf": self.cloud_bf}),
            meta=np.array(json.dumps({"classes": self.classes.to_json(), "conditions": self.conditions, "info": self.info})),
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> CollabCache:
        try:  # never unpickle: a cache directory may come from anywhere
            z = np.load(path, allow_pickle=False)
            meta = json.loads(str(z["meta"]))
            probs, cloud_pred = _unarrays(z, "probs"), _unarrays(z, "cloud_pred")
        except (ValueError, KeyError, OSError, json.JSONDecodeError) as e:
            raise DataError(f"{path} is not a readable collab cache ({str(e)[:120]}); delete it and it is rebuilt") from None
        return cls(
            ClassTable.from_json(meta["classes"]), [torch.from_numpy(p) for p in probs], z["device_cm"], z["cloud_cm"],
            cloud_pred, z["bytes_up"], z["bytes_down"], z["device_ms"], z["cloud_ms"], meta["conditions"], meta["info"],
            z["groups"] if "groups" in z else None, z["device_bf"] if "device_bf" in z else None,
            z["cloud_bf"] if "cloud_bf" in z else None,
        )


def _arrays(name: str, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    """One stacked array when all frames share a size, else one array per frame (`name/i`): no object arrays, so
    loading never needs pickle."""
    if len({a.shape for a in arrays}) == 1:
        return {name: np.stack(arrays)}
    return {f"{name}/{i}": a for i, a in enumerate(arrays)} | {f"{name}/count": np.array(len(arrays))}


def _unarrays(z, name: str) -> list[np.ndarray]:
    if name in z:
        return list(z[name])
    return [z[f"{name}/{i}"] for i in range(int(z[f"{name}/count"]))]


def frame_cm(pred: np.ndarray, label: np.ndarray, classes: ClassTable) -> np.ndarray:
    cm = ConfusionMatrix(classes.num_classes, classes.ignore_index)
    cm.update(pred, label)
    return cm.mat


def condition_of(dataset: SegDataset, index: int) -> str:
    at = getattr(dataset, "condition_at", None)
    if at is None:
        return "clean"
    c = at(index)
    return "clean" if c is None else str(c)


def source_of(dataset: SegDataset, index: int) -> int:
    """The labelled frame frame `index` shows (RepeatedSchedules plays a split several times), else `index`."""
    at = getattr(dataset, "source_index", None)
    return index if at is None else int(at(index))


def through_runtime(dataset: SegDataset, runtime: DeviceRuntime, n: int) -> Iterator[tuple[int, Sample, FrameHandle, FrameResult]]:
    """Frames 0..n-1 through `runtime`, each finished before the next, as (index, sample, handle, result); the heap
    is trimmed every 16 frames (long loops)."""
    heap = HeapTrimmer()
    for i in range(n):
        heap.tick()
        s = dataset[i]
        handle = runtime.process(s.image, i)
        yield i, s, handle, runtime.finish(handle)


def build_cache(
    dataset: SegDataset, device_model: nn.Module, cloud_model: nn.Module, codec: str = "png", limit: int | None = None,
    send_device_probs: bool = False, on_frame: Callable[[], None] | None = None, feature_codec: FeatureCodec | None = None,
    fuse: FuseStep | None = None,
) -> CollabCache:
    """Every frame through the runtime with policy `all` and the real cloud in-process: the device's view, the
    cloud's reply (via CloudService on the decoded payload, as over HTTP) and their sizes and times. With codec
    'features' the uploads are JD bitstreams and the cloud's maps come from `feature_codec`'s joint decoder.
    With a fuse step (CFE), the 'device' figures are the map the step shows for a frame the cloud never answered
    (the refined map) and the 'cloud' figures the map it shows for an answered one (the fused map)."""
    classes = dataset.classes
    codec_ = parse_upload_codec(codec)
    link = InProcessLink(CloudService(ModelSegmenter(cloud_model, feature_codec), classes))
    model_step, payload = make_device_steps(device_model, codec_, "cache", send_device_probs, feature_codec)
    runtime = DeviceRuntime(model_step, make_policy("all"), FixedSelection([]), link, payload=payload, fuse=fuse)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise ValueError("the evaluation stream is empty")
    rows: dict[str, list] = {k: [] for k in ("probs", "dcm", "ccm", "cpred", "up", "down", "dms", "cms", "cond", "src", "dbf", "cbf", "lms", "fms")}
    for i, s, handle, res in through_runtime(dataset, runtime, n):
        if res.provenance != "cloud":
            raise RuntimeError(f"frame {i}: the in-process cloud did not answer ({res.provenance})")
        t0 = time.perf_counter()
        local = runtime.fuse.local(handle.device)  # what the device shows when the cloud does not answer
        local_ms = (time.perf_counter() - t0) * 1e3
        for key, value in (
            ("probs", handle.device.probs), ("dcm", frame_cm(local, s.label, classes)),
            ("dbf", boundary_counts(local, s.label, classes.ignore_index)), ("cbf", boundary_counts(res.label, s.label, classes.ignore_index)),
            ("lms", local_ms), ("fms", res.fuse_ms),
            ("ccm", frame_cm(res.label, s.label, classes)), ("cpred", res.label), ("up", res.bytes_up), ("down", res.bytes_down),
            ("dms", res.device_ms), ("cms", res.cloud_ms), ("cond", condition_of(dataset, i)), ("src", source_of(dataset, i)),
        ):
            rows[key].append(value)
        if on_frame:
            on_frame()
    runtime.close()
    h, w = dataset[0].image.shape[:2]
    info = {
        "frames": n, "height": h, "width": w, "codec": str(codec_), "send_device_probs": send_device_probs,
        "device_gflops": count_gflops(device_model.forward_coarse, (1, 3, h, w)),
        "cloud_gflops": count_gflops(cloud_model, (1, 3, h, w)), "threads": torch.get_num_threads(),
        "fuse": type(runtime.fuse).__name__, "fuse_local_ms_median": float(np.median(rows["lms"])),
        "fuse_answered_ms_median": float(np.median(rows["fms"])),
    }
    return CollabCache(
        classes, rows["probs"], np.stack(rows["dcm"]), np.stack(rows["ccm"]), rows["cpred"], np.array(rows["up"]),
        np.array(rows["down"]), np.array(rows["dms"]), np.array(rows["cms"]), rows["cond"], info, np.array(rows["src"], dtype=np.int64),
        np.stack(rows["dbf"]), np.stack(rows["cbf"]),
    )


def cache_key(parts: dict) -> str:
    """A stable key for the disk cache from the run's identity (paths, sizes and mtimes of the weights)."""
    return hashlib.sha1(json.dumps({**parts, "v": CACHE_VERSION}, sort_keys=True).encode()).hexdigest()[:16]


def checkpoint_identity(folder: str | Path) -> dict:
    w = Path(folder) / "weights.safetensors"
    st = w.stat()
    return {"path": str(Path(folder).resolve()), "size": st.st_size, "mtime": int(st.st_mtime)}


def load_or_build_cache(
    dataset: SegDataset, device_model: nn.Module, cloud_model: nn.Module, codec: str, limit: int | None, send: bool,
    cache_dir: Path | None, identity: dict, on_frame: Callable[[], None] | None = None, feature_codec: FeatureCodec | None = None,
    fuse: FuseStep | None = None,
) -> tuple[CollabCache, Path | None]:
    """The cache of this run from `cache_dir` when one with the same identity is there, else built (and saved).
    Returns the cache and the file it was read from (None when built)."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    key = cache_key({**identity, "codec": codec, "frames": n, "send": send})
    path = cache_dir / f"collab-{key}.npz" if cache_dir else None
    if path is not None and path.is_file():
        return CollabCache.load(path), path
    cache = build_cache(dataset, device_model, cloud_model, codec, limit, send, on_frame, feature_codec, fuse)
    cache.info.update(identity)
    if path is not None:
        cache.save(path)
    return cache, None


def collab_cm(cache: CollabCache, mask: np.ndarray) -> np.ndarray:
    """Confusion matrix of the collaborative result: cloud on uploaded frames, device elsewhere."""
    return cache.device_cm[~mask].sum(0) + cache.cloud_cm[mask].sum(0)


def collab_frame_cms(cache: CollabCache, mask: np.ndarray) -> np.ndarray:
    """(N, C, C) per-frame confusion matrices of the collaborative result (the bootstrap resamples these)."""
    return np.where(np.asarray(mask, bool)[:, None, None], cache.cloud_cm, cache.device_cm)


def cache_info(cache: CollabCache) -> dict:
    """Cost figures of the stream: latencies (medians) and GFLOPs per frame."""
    i = cache.info
    return {
        "device_ms": float(np.median(cache.device_ms)), "cloud_ms": float(np.median(cache.cloud_ms)),
        "device_gflops": i.get("device_gflops"), "cloud_gflops": i.get("cloud_gflops"), "threads": i.get("threads"),
        "height": i.get("height"), "width": i.get("width"), "codec": i.get("codec"),
    }


def frame_size(cache: CollabCache, index: int) -> tuple[int, int]:
    """(H, W) of frame `index` (streams may mix frame sizes)."""
    return tuple(cache.cloud_pred[index].shape[:2])
