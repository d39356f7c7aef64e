"""Collaborative evaluation: how much of the cloud's accuracy does selective offloading buy?

Two paths that must agree (tests/test_collab.py checks it):

* cached path (sweeps): the device and the cloud run ONCE per frame (the cloud through the same
  `CloudService` the link calls, on the decoded payload), leaving per-frame coarse probabilities,
  per-frame confusion matrices and payload sizes. Every (policy, rate) is then a cheap sequential
  replay of policy + controller over the cached frames (DCAM included, with the same `dcam_update`).
* runtime path (single runs): the real `DeviceRuntime` + `InProcessLink`, frame by frame, with real
  encoded bytes.

mIoU is dataset-level (one confusion matrix over the stream). The final map of an uploaded frame is the
cloud's prediction, otherwise the device's (fusion comes later). The oracle picks, at the same number
of uploads, the frames whose cloud prediction raises the stream's mIoU most (greedy, then swap local
search, started from every policy's own choice so it is an upper bound of each); it knows labels and
the cloud's output and is not causal.
"""

from __future__ import annotations

import copy
import hashlib
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tandemseg.cloud.dcam import dcam_update
from tandemseg.cloud.service import CloudService
from tandemseg.data.base import SegDataset
from tandemseg.data.classes import ClassTable
from tandemseg.device.budget import BudgetSpec, Controller, FixedSelection, make_controller
from tandemseg.device.link import InProcessLink
from tandemseg.device.policies import FrameObservation, Policy, make_policy
from tandemseg.device.runtime import DeviceRuntime, run_device
from tandemseg.device.uncertainty import UncertaintyMatrix
from tandemseg.eval.metrics import ConfusionMatrix
from tandemseg.wire.messages import UploadRequest
from tandemseg.wire.payload import decode_label_png, encode_frame, pack_probs, parse_codec, unpack_probs

CACHE_VERSION = 1
HINDSIGHT = "hindsight"  # budget mode: per-stream top-k by score (non-causal), see replay_run
RANDOM_SEEDS = 5  # the random policy is averaged over this many seeds in sweeps


# ----------------------------------------------------------------------------- per-frame cache


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

    @property
    def frames(self) -> int:
        return len(self.probs)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp, probs=_stack([p.numpy() for p in self.probs]), device_cm=self.device_cm, cloud_cm=self.cloud_cm,
            cloud_pred=_stack(self.cloud_pred), bytes_up=self.bytes_up, bytes_down=self.bytes_down,
            device_ms=self.device_ms, cloud_ms=self.cloud_ms,
            meta=np.array(json.dumps({"classes": self.classes.to_json(), "conditions": self.conditions, "info": self.info})),
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> CollabCache:
        z = np.load(path, allow_pickle=True)  # our own file; object arrays hold frames of mixed sizes
        meta = json.loads(str(z["meta"]))
        return cls(
            ClassTable.from_json(meta["classes"]), [torch.from_numpy(p) for p in z["probs"]], z["device_cm"], z["cloud_cm"],
            list(z["cloud_pred"]), z["bytes_up"], z["bytes_down"], z["device_ms"], z["cloud_ms"], meta["conditions"], meta["info"],
        )


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    """One array when all frames share a size, else an object array (streams of mixed sizes)."""
    if len({a.shape for a in arrays}) == 1:
        return np.stack(arrays)
    out = np.empty(len(arrays), dtype=object)
    out[:] = arrays
    return out


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


def build_cache(
    dataset: SegDataset, device_model: nn.Module, cloud_model: nn.Module, codec: str = "png", limit: int | None = None,
    send_device_probs: bool = False, on_frame: Callable[[], None] | None = None,
) -> CollabCache:
    """Device and cloud once per frame; the cloud via CloudService on the decoded payload, as the link would."""
    classes = dataset.classes
    service = CloudService(cloud_model, classes)
    codec_ = parse_codec(codec)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    rows: dict[str, list] = {k: [] for k in ("probs", "dcm", "ccm", "cpred", "up", "down", "dms", "cms", "cond")}
    for i in range(n):
        s = dataset[i]
        out = run_device(device_model, s.image)
        req = UploadRequest("cache", i, encode_frame(s.image, codec_), str(codec_), s.image.shape[0], s.image.shape[1])
        if send_device_probs:
            req.device_probs, req.device_probs_shape = pack_probs(out.probs.numpy())
        reply = service.segment_batch([req])[0]
        cloud_pred = decode_label_png(reply.label_png).astype(np.uint8)
        for key, value in (
            ("probs", out.probs), ("dcm", frame_cm(out.pred, s.label, classes)), ("ccm", frame_cm(cloud_pred, s.label, classes)),
            ("cpred", cloud_pred), ("up", req.bytes_up), ("down", reply.bytes_down), ("dms", out.device_ms),
            ("cms", reply.cloud_ms), ("cond", condition_of(dataset, i)),
        ):
            rows[key].append(value)
        if on_frame:
            on_frame()
    if n == 0:
        raise ValueError("the evaluation stream is empty")
    h, w = dataset[0].image.shape[:2]
    info = {
        "frames": n, "height": h, "width": w, "codec": str(codec_), "send_device_probs": send_device_probs,
        "device_gflops": gflops(device_model.forward_coarse, (1, 3, h, w)), "cloud_gflops": gflops(cloud_model, (1, 3, h, w)),
        "threads": torch.get_num_threads(),
    }
    return CollabCache(
        classes, rows["probs"], np.stack(rows["dcm"]), np.stack(rows["ccm"]), rows["cpred"], np.array(rows["up"]),
        np.array(rows["down"]), np.array(rows["dms"]), np.array(rows["cms"]), rows["cond"], info,
    )


@torch.inference_mode()
def gflops(fn: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...]) -> float:
    """GFLOPs of one call (torch.utils.flop_counter: 2 FLOPs per multiply-add; convolutions and matmuls)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn(torch.zeros(shape))
    return counter.get_total_flops() / 1e9


def cache_key(parts: dict) -> str:
    """A stable key for the disk cache from the run's identity (paths, sizes and mtimes of the weights)."""
    return hashlib.sha1(json.dumps({**parts, "v": CACHE_VERSION}, sort_keys=True).encode()).hexdigest()[:16]


def checkpoint_identity(folder: str | Path) -> dict:
    w = Path(folder) / "weights.safetensors"
    st = w.stat()
    return {"path": str(Path(folder).resolve()), "size": st.st_size, "mtime": int(st.st_mtime)}


# ----------------------------------------------------------------------------- metrics over selections


def miou_of(cm: np.ndarray) -> float:
    """Dataset-level mIoU of one confusion matrix (same definition as ConfusionMatrix.miou)."""
    m = ConfusionMatrix(cm.shape[0])
    m.mat = cm
    return m.miou()


def batched_miou(cms: np.ndarray) -> np.ndarray:
    """mIoU of each of K confusion matrices (K, C, C), vectorised for the oracle's search."""
    tp = np.diagonal(cms, axis1=1, axis2=2).astype(np.float64)  # (K, C)
    denom = cms.sum(1) + cms.sum(2) - tp  # (K, C)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)
    valid = np.isfinite(iou)
    return np.where(valid.any(1), np.nansum(iou, 1) / np.maximum(valid.sum(1), 1), np.nan)


def collab_cm(cache: CollabCache, mask: np.ndarray) -> np.ndarray:
    """Confusion matrix of the collaborative result: cloud on uploaded frames, device elsewhere."""
    return cache.device_cm[~mask].sum(0) + cache.cloud_cm[mask].sum(0)


def frame_gains(cache: CollabCache) -> np.ndarray:
    """Each frame's marginal gain in stream mIoU when its cloud prediction replaces the device's alone."""
    base = cache.device_cm.sum(0)
    delta = cache.cloud_cm - cache.device_cm  # (N, C, C)
    return batched_miou(base[None] + delta) - miou_of(base)


def oracle_select(cache: CollabCache, k: int, starts: Sequence[np.ndarray] = (), max_passes: int = 20) -> np.ndarray:
    """Offline upper bound: the k frames whose cloud predictions maximise the stream's mIoU.

    Greedy (each step adds the frame that raises mIoU most), then swap local search (replace a chosen frame
    by an unchosen one while that helps), started from the greedy choice and from each of `starts`;
    the best end point wins, so the oracle is never below any start at the same k.
    """
    n = cache.frames
    k = int(min(max(k, 0), n))
    delta = (cache.cloud_cm - cache.device_cm).astype(np.int64)  # (N, C, C)
    base = cache.device_cm.sum(0)
    candidates = [_greedy(base, delta, k)] + [np.asarray(s, bool) for s in starts if int(np.sum(s)) == k]
    best, best_miou = None, -np.inf
    for start in candidates:
        mask = _swap_search(base, delta, start.copy(), max_passes)
        m = miou_of(base + delta[mask].sum(0))
        if m > best_miou + 1e-15:
            best, best_miou = mask, m
    return best


def _greedy(base: np.ndarray, delta: np.ndarray, k: int) -> np.ndarray:
    mask = np.zeros(len(delta), dtype=bool)
    cm = base.copy()
    for _ in range(k):
        scores = batched_miou(cm[None] + delta)
        scores[mask] = -np.inf
        j = int(np.nanargmax(scores))
        mask[j] = True
        cm = cm + delta[j]
    return mask


def _swap_search(base: np.ndarray, delta: np.ndarray, mask: np.ndarray, max_passes: int) -> np.ndarray:
    if mask.all() or not mask.any():
        return mask
    cm = base + delta[mask].sum(0)
    current = miou_of(cm)
    for _ in range(max_passes):
        improved = False
        for i in np.flatnonzero(mask):
            outside = np.flatnonzero(~mask)
            trial = batched_miou((cm - delta[i])[None] + delta[outside])
            j = int(np.nanargmax(trial))
            if trial[j] > current + 1e-12:
                mask[i], mask[outside[j]] = False, True
                cm = cm - delta[i] + delta[outside[j]]
                current = float(trial[j])
                improved = True
        if not improved:
            break
    return mask


# ----------------------------------------------------------------------------- replaying a policy over the cache


@dataclass
class DcamConfig:
    """DCAM in the loop (ACDC eq. 13-14): the cloud updates U from each uploaded frame's pseudo-label."""

    alpha: float
    initial_u: np.ndarray  # what the cloud starts from for this device


@dataclass
class Replay:
    mask: np.ndarray  # (N,) uploaded
    scores: np.ndarray  # (N,)
    score_ms: np.ndarray  # (N,) policy + controller time per frame
    controller: dict
    u_updates: int = 0


def replay(cache: CollabCache, policy: Policy, controller: Controller, dcam: DcamConfig | None = None) -> Replay:
    """Run policy + controller over the cached frames in order, exactly as DeviceRuntime.process would."""
    n = cache.frames
    mask, scores, ms = np.zeros(n, bool), np.zeros(n), np.zeros(n)
    u_held = getattr(policy, "uncertainty", None)
    cloud_u = None if dcam is None else np.asarray(dcam.initial_u, dtype=np.float64).copy()
    version, updates = (u_held.version if u_held is not None else 0), 0
    for i in range(n):
        t0 = time.perf_counter()
        s = policy.score(FrameObservation(i, cache.probs[i]))
        up = policy.fixed if policy.fixed is not None else controller.decide(s, i)
        ms[i] = (time.perf_counter() - t0) * 1e3
        mask[i], scores[i] = bool(up), s
        if up:
            controller.charge(int(cache.bytes_up[i]))
            if dcam is not None and dcam.alpha > 0:
                # the service sees the uint8-quantised probabilities and replies with a float32 U
                probs = unpack_probs(*pack_probs(cache.probs[i].numpy()))
                new_u, changed = dcam_update(cloud_u, probs, cache.cloud_pred[i], dcam.alpha, ignore_index=cache.classes.ignore_index)
                if changed:
                    cloud_u, version, updates = np.asarray(new_u, np.float64), version + 1, updates + 1
                    if u_held is not None:
                        u_held.replace(cloud_u.astype(np.float32).astype(np.float64), version)
    return Replay(mask, scores, ms, controller.summary(), updates)


def selection_metrics(cache: CollabCache, mask: np.ndarray, oracle_starts: Sequence[np.ndarray] = ()) -> dict:
    """mIoUs, oracle at the same number of uploads, gain captured, rates and bytes for one selection."""
    n, k = cache.frames, int(mask.sum())
    device = miou_of(cache.device_cm.sum(0))
    cloud = miou_of(cache.cloud_cm.sum(0))
    collab = miou_of(collab_cm(cache, mask))
    oracle_mask = oracle_select(cache, k, [mask, *oracle_starts])
    oracle = miou_of(collab_cm(cache, oracle_mask))
    span = oracle - device
    return {
        "device_miou": device, "cloud_miou": cloud, "collab_miou": collab, "oracle_miou": oracle,
        "gain_captured": (collab - device) / span if span > 1e-12 else None,
        "upload_rate": k / n, "uploads": k, "frames": n,
        "bytes_up_per_frame": float(cache.bytes_up[mask].sum() / n),
        "bytes_down_per_frame": float(cache.bytes_down[mask].sum() / n),
        "upload_rate_by_condition": rate_by_condition(cache.conditions, mask),
    }


def rate_by_condition(conditions: list[str], mask: np.ndarray) -> dict:
    out = {}
    for c in dict.fromkeys(conditions):
        sel = np.array([x == c for x in conditions])
        out[c] = {"frames": int(sel.sum()), "upload_rate": float(mask[sel].mean())}
    return out


# ----------------------------------------------------------------------------- runs


@dataclass
class PolicyRun:
    """How to build one (policy, budget) run; fresh objects each time so runs never share state."""

    policy: str
    budget: BudgetSpec
    uncertainty: UncertaintyMatrix | None = None
    seed: int = 0
    dcam_alpha: float = 0.0
    params: dict = field(default_factory=dict)

    def make(self, cache: CollabCache | None = None, oracle_frames: np.ndarray | None = None) -> tuple[Policy, Controller, UncertaintyMatrix | None]:
        u = copy.deepcopy(self.uncertainty)
        params = dict(self.params)
        if self.policy == "random":
            params.setdefault("seed", self.seed)
        if self.policy == "oracle":
            if cache is None:
                raise ValueError("the oracle policy needs the cache of the stream")
            params["gains"] = dict(enumerate(frame_gains(cache).tolist()))
        policy = make_policy(self.policy, u, **params)
        if self.policy == "oracle":
            controller: Controller = FixedSelection(np.flatnonzero(oracle_frames), cache.frames)
        elif self.budget.mode == HINDSIGHT:
            controller = FixedSelection([], cache.frames if cache is not None else None)  # scores only; see replay_run
        else:
            initial = float(np.median(cache.bytes_up)) if cache is not None else None
            controller = make_controller(self.budget, initial_bytes=initial)
        return policy, controller, u

    def dcam(self) -> DcamConfig | None:
        if self.dcam_alpha > 0 and self.uncertainty is not None:
            return DcamConfig(self.dcam_alpha, self.uncertainty.u)
        return None


def oracle_frames_for(cache: CollabCache, rate: float) -> np.ndarray:
    """The oracle's own choice at a target rate (round(rate * N) frames)."""
    return oracle_select(cache, round(rate * cache.frames))


def replay_run(cache: CollabCache, run: PolicyRun) -> Replay:
    """Replay one run; with budget mode 'hindsight' the scores come from a replay and the k = round(r N)
    best-scored frames of the whole stream are taken (a per-stream threshold, as ACDC's tau_s of eq. 10
    set to hit the rate: not causal, evaluation only, isolates a score's ranking from the controller)."""
    oracle_mask = oracle_frames_for(cache, run.budget.rate or 0.0) if run.policy == "oracle" else None
    policy, controller, _ = run.make(cache, oracle_mask)
    if run.budget.mode != HINDSIGHT or run.policy == "oracle":
        return replay(cache, policy, controller, run.dcam())
    rep = replay(cache, policy, controller, None)
    if policy.fixed is not None:
        return rep
    k = round((run.budget.rate or 0.0) * cache.frames)
    rep.mask = top_k_mask(rep.scores, k)
    rep.controller = {"target_rate": run.budget.rate, "mode": HINDSIGHT}
    return rep


def top_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """The k highest finite scores (earlier frame first among ties)."""
    order = np.argsort(-scores, kind="stable")
    order = order[np.isfinite(scores[order])][:k]
    mask = np.zeros(len(scores), dtype=bool)
    mask[order] = True
    return mask


def run_cached(cache: CollabCache, run: PolicyRun) -> tuple[dict, Replay]:
    """One (policy, budget) over the cache; returns (metrics, replay)."""
    rep = replay_run(cache, run)
    metrics = selection_metrics(cache, rep.mask)
    target = run.budget.rate if run.budget.bytes_per_s is None else rep.controller["target_rate"]
    metrics.update(policy=run.policy, target_rate=target, rate_error=metrics["upload_rate"] - target,
                   score_ms=float(np.median(rep.score_ms)), dcam_updates=rep.u_updates)
    return metrics, rep


def median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if len(values) else None


def run_runtime(
    dataset: SegDataset, cache: CollabCache, run: PolicyRun, device_model: nn.Module, cloud_model: nn.Module, codec: str,
    limit: int | None = None, send_device_probs: bool = False, on_frame: Callable[[], None] | None = None,
) -> dict:
    """The single-run path: DeviceRuntime + InProcessLink over the stream, real encoded bytes."""
    oracle_mask = oracle_frames_for(cache, run.budget.rate or 0.0) if run.policy == "oracle" else None
    policy, controller, u = run.make(cache, oracle_mask)
    dcam = run.dcam()
    service = CloudService(cloud_model, dataset.classes, dcam_alpha=dcam.alpha if dcam else 0.0,
                           initial_u=dcam.initial_u if dcam else None)
    send_probs = send_device_probs or dcam is not None
    runtime = DeviceRuntime(device_model, policy, controller, InProcessLink(service), codec=codec,
                            send_device_probs=send_probs, uncertainty=u)
    cm = ConfusionMatrix(dataset.classes.num_classes, dataset.classes.ignore_index)
    n = cache.frames if limit is None else min(limit, cache.frames)
    results = []
    for i in range(n):
        s = dataset[i]
        res = runtime.finish(runtime.process(s.image, i, s.label))
        cm.update(res.label, s.label)
        results.append(res)
        if on_frame:
            on_frame()
    runtime.close()
    mask = np.array([r.uploaded for r in results])
    provenance: dict[str, int] = {}
    for r in results:
        provenance[r.provenance] = provenance.get(r.provenance, 0) + 1
    up = [r for r in results if r.provenance == "cloud"]
    device_ms = median([r.device_ms for r in results])
    score_ms = median([r.score_ms for r in results])
    return {
        "collab_miou": cm.miou(), "mask": mask, "controller": controller.summary(), "provenance": provenance,
        "bytes_up_per_frame": sum(r.bytes_up for r in results) / n, "bytes_down_per_frame": sum(r.bytes_down for r in results) / n,
        "bytes_up_per_upload": (sum(r.bytes_up for r in up) / len(up)) if up else None,
        "device_ms": device_ms, "score_ms": score_ms, "score_overhead": (score_ms / device_ms) if device_ms else None,
        "encode_ms": median([r.encode_ms for r in results if r.uploaded]), "cloud_ms_uploaded": median([r.cloud_ms for r in up]),
        "u_version": u.version if u is not None else None,
    }


def sweep(cache: CollabCache, runs: list[PolicyRun], labels: list[str] | None = None) -> dict:
    """Every run over the cache; random is averaged over RANDOM_SEEDS seeds; the oracle at each achieved k
    is started from every selection with that k, so it bounds every policy."""
    labels = labels or [r.policy for r in runs]
    replays: list[tuple[str, PolicyRun, list[Replay]]] = []
    for label, run in zip(labels, runs, strict=True):
        seeds = range(RANDOM_SEEDS) if run.policy == "random" else [run.seed]
        reps = []
        for sd in seeds:
            r = copy.copy(run)
            r.seed = sd
            reps.append(replay_run(cache, r))
        replays.append((label, run, reps))
    starts_by_k: dict[int, list[np.ndarray]] = {}
    for _, _, reps in replays:
        for rep in reps:
            starts_by_k.setdefault(int(rep.mask.sum()), []).append(rep.mask)
    rows = []
    for label, run, reps in replays:
        per_seed = [selection_metrics(cache, rep.mask, starts_by_k[int(rep.mask.sum())]) for rep in reps]
        row = _mean_rows(per_seed)
        row.update(policy=label, target_rate=run.budget.rate, score_ms=float(np.median(np.concatenate([r.score_ms for r in reps]))),
                   rate_error=row["upload_rate"] - (run.budget.rate or 0.0), seeds=len(reps))
        if len(reps) > 1:
            row["collab_miou_std"] = float(np.std([m["collab_miou"] for m in per_seed]))
        rows.append(row)
    return {"device_miou": miou_of(cache.device_cm.sum(0)), "cloud_miou": miou_of(cache.cloud_cm.sum(0)), "rows": rows}


def _mean_rows(rows: list[dict]) -> dict:
    """Average numeric fields over seeds (gain_captured averaged per seed, None if any seed has none)."""
    if len(rows) == 1:
        return dict(rows[0])
    out = dict(rows[0])
    for key, v in rows[0].items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            vals = [r[key] for r in rows]
            out[key] = float(np.mean(vals))
    gains = [r["gain_captured"] for r in rows]
    out["gain_captured"] = None if any(g is None for g in gains) else float(np.mean(gains))
    return out


def cache_info(cache: CollabCache) -> dict:
    """Cost figures of the stream: latencies (medians) and GFLOPs per frame."""
    i = cache.info
    return {
        "device_ms": float(np.median(cache.device_ms)), "cloud_ms": float(np.median(cache.cloud_ms)),
        "device_gflops": i.get("device_gflops"), "cloud_gflops": i.get("cloud_gflops"), "threads": i.get("threads"),
        "height": i.get("height"), "width": i.get("width"), "codec": i.get("codec"),
    }
