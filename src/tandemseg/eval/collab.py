"""Collaborative evaluation: how much of the cloud's accuracy does selective offloading buy?

Two paths that must agree (tests/test_collab.py checks it):

* cached path (sweeps): the device and the cloud run ONCE per frame (the cloud through the same
  `CloudService` the link calls, on the decoded payload), leaving per-frame coarse probabilities,
  per-frame confusion matrices and payload sizes. Every (policy, rate) is then a cheap sequential
  replay of policy + controller over the cached frames (DCAM included, with the same `dcam_update`).
* runtime path (single runs): the real `DeviceRuntime` + `InProcessLink`, frame by frame, with real
  encoded bytes.

mIoU is dataset-level (one confusion matrix over the stream). The final map of an uploaded frame is the
cloud's prediction, otherwise the device's (fusion comes later).

Policies are compared at the same TARGET rate r, in absolute terms: every row reports `collab_miou` and
the achieved `upload_rate` next to r, and `auc` summarises a policy's curve over 2-30% target rates
(eval/bootstrap.py). The reference is the greedy oracle at the target count k = round(r N): it picks
the frames whose cloud predictions raise the stream's mIoU most (greedy forward selection, then swap
local search), knows labels and the cloud's output, and is not causal. It is a search, not a proven
optimum (tests compare it with exhaustive search up to k = 5), and it is never started from any policy's
own selection, so it does not depend on which policies are compared. `gain_captured` =
(collab - device) / (oracle at k - device): a policy that uploads fewer frames than asked is measured
against the oracle at the count it was asked for. Every figure carries a 95% bootstrap interval over
source frames, with the same draws for every policy (paired), so differences get their own intervals.
"""

from __future__ import annotations

import copy
import dataclasses
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

from tandemseg.cloud.dcam import DcamSettings, dcam_update
from tandemseg.cloud.service import CloudService
from tandemseg.data.base import SegDataset
from tandemseg.data.classes import ClassTable
from tandemseg.device.budget import BudgetSpec, Controller, FixedSelection, make_controller
from tandemseg.device.link import InProcessLink
from tandemseg.device.policies import FrameObservation, Policy, make_policy
from tandemseg.device.runtime import DeviceRuntime, run_device
from tandemseg.device.uncertainty import UncertaintyMatrix
from tandemseg.eval.bootstrap import AUC_SPAN, DEFAULT_RESAMPLES, Resamples, batched_miou, rate_auc
from tandemseg.eval.metrics import ConfusionMatrix
from tandemseg.wire.messages import UploadRequest
from tandemseg.wire.payload import decode_label_png, encode_frame, pack_probs, parse_codec, unpack_probs

CACHE_VERSION = 2  # 2: per-frame source index (groups) for the bootstrap
HINDSIGHT = "hindsight"  # budget mode: per-stream top-k by score (non-causal), see replay_run
RANDOM_SEEDS = 5  # the random policy is averaged over this many seeds in sweeps
DIFF_BASELINES = ("random", "entropy")  # sweeps report every policy's paired difference to these
ORACLE = "greedy: forward selection then swap local search, at round(target rate x frames) uploads; not seeded from any policy"


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
    groups: np.ndarray | None = None  # (N,) source frame of each frame (repeated schedules); None: all distinct

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
            tmp, probs=_stack([p.numpy() for p in self.probs]), device_cm=self.device_cm, cloud_cm=self.cloud_cm,
            cloud_pred=_stack(self.cloud_pred), bytes_up=self.bytes_up, bytes_down=self.bytes_down,
            device_ms=self.device_ms, cloud_ms=self.cloud_ms, groups=self.sources,
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
            z["groups"] if "groups" in z else None,
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


def source_of(dataset: SegDataset, index: int) -> int:
    """The labelled frame frame `index` shows (RepeatedSchedules plays a split several times), else `index`."""
    at = getattr(dataset, "source_index", None)
    return index if at is None else int(at(index))


def build_cache(
    dataset: SegDataset, device_model: nn.Module, cloud_model: nn.Module, codec: str = "png", limit: int | None = None,
    send_device_probs: bool = False, on_frame: Callable[[], None] | None = None,
) -> CollabCache:
    """Device and cloud once per frame; the cloud via CloudService on the decoded payload, as the link would."""
    classes = dataset.classes
    service = CloudService(cloud_model, classes)
    codec_ = parse_codec(codec)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    rows: dict[str, list] = {k: [] for k in ("probs", "dcm", "ccm", "cpred", "up", "down", "dms", "cms", "cond", "src")}
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
            ("cms", reply.cloud_ms), ("cond", condition_of(dataset, i)), ("src", source_of(dataset, i)),
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
        np.array(rows["down"]), np.array(rows["dms"]), np.array(rows["cms"]), rows["cond"], info, np.array(rows["src"], dtype=np.int64),
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


def collab_cm(cache: CollabCache, mask: np.ndarray) -> np.ndarray:
    """Confusion matrix of the collaborative result: cloud on uploaded frames, device elsewhere."""
    return cache.device_cm[~mask].sum(0) + cache.cloud_cm[mask].sum(0)


def collab_frame_cms(cache: CollabCache, mask: np.ndarray) -> np.ndarray:
    """(N, C, C) per-frame confusion matrices of the collaborative result (the bootstrap resamples these)."""
    return np.where(np.asarray(mask, bool)[:, None, None], cache.cloud_cm, cache.device_cm)


def frame_gains(cache: CollabCache) -> np.ndarray:
    """Each frame's marginal gain in stream mIoU when its cloud prediction replaces the device's alone."""
    base = cache.device_cm.sum(0)
    delta = cache.cloud_cm - cache.device_cm  # (N, C, C)
    return batched_miou(base[None] + delta) - miou_of(base)


def target_count(rate: float, frames: int) -> int:
    """k = round(rate * N): the number of uploads a target rate asks for on an N-frame stream."""
    return int(round(rate * frames))


def greedy_oracle_select(cache: CollabCache, k: int, max_passes: int = 20) -> np.ndarray:
    """The greedy oracle's k frames: a search for the k cloud predictions that raise the stream's mIoU most.

    1. Greedy forward selection: k times, add the frame whose cloud prediction raises the stream's mIoU most.
    2. Swap local search: replace a chosen frame by an unchosen one while that raises mIoU (at most
       `max_passes` passes over the chosen frames).
    Dataset-level mIoU is a mean of per-class ratios, not a sum over frames, so this is a heuristic: the best
    subset may score higher (tests/test_oracle.py measures the gap against exhaustive search up to k = 5).
    It reads labels and the cloud's output (not causal) and is never started from a policy's selection, so
    the reference does not depend on the policies it is compared with.
    """
    n = cache.frames
    k = int(min(max(k, 0), n))
    delta = (cache.cloud_cm - cache.device_cm).astype(np.int64)  # (N, C, C)
    base = cache.device_cm.sum(0)
    return _swap_search(base, delta, _greedy(base, delta, k), max_passes)


def _greedy(base: np.ndarray, delta: np.ndarray, k: int) -> np.ndarray:
    """Forward selection: each step adds the frame with the largest mIoU after adding it (earliest on ties)."""
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
    """1-swap hill climbing from `mask`: best exchange per chosen frame while it strictly raises mIoU."""
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


class GreedyOracle:
    """`greedy_oracle_select` memoised by k for one cache: every policy of a sweep at a target rate shares it."""

    def __init__(self, cache: CollabCache) -> None:
        self.cache = cache
        self._masks: dict[int, np.ndarray] = {}

    def mask(self, k: int) -> np.ndarray:
        k = int(min(max(k, 0), self.cache.frames))
        if k not in self._masks:
            self._masks[k] = greedy_oracle_select(self.cache, k)
        return self._masks[k].copy()

    def at_rate(self, rate: float) -> np.ndarray:
        """The oracle's choice at the target count round(rate * N)."""
        return self.mask(target_count(rate, self.cache.frames))


# ----------------------------------------------------------------------------- replaying a policy over the cache


@dataclass
class DcamConfig:
    """DCAM in the loop (ACDC eq. 13-14): the cloud updates U from each uploaded frame's pseudo-label."""

    alpha: float
    initial_u: np.ndarray  # what the cloud starts from for this device
    settings: DcamSettings = field(default_factory=DcamSettings)  # U_new fitted as the device's U was (its metadata)


@dataclass
class Replay:
    mask: np.ndarray  # (N,) uploaded
    scores: np.ndarray  # (N,)
    score_ms: np.ndarray  # (N,) policy + controller time per frame
    controller: dict
    u_updates: int = 0


def replay(cache: CollabCache, policy: Policy, controller: Controller, dcam: DcamConfig | None = None) -> Replay:
    """Run policy + controller over the cached frames in order, exactly as DeviceRuntime.process would.

    Causal as the runtime is: frame i's decision reads frames <= i only (tests/test_causality.py)."""
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
                new_u, changed = dcam_update(cloud_u, probs, cache.cloud_pred[i], dcam.alpha, ignore_index=cache.classes.ignore_index,
                                             settings=dcam.settings)
                if changed:
                    cloud_u, version, updates = np.asarray(new_u, np.float64), version + 1, updates + 1
                    if u_held is not None:
                        u_held.replace(cloud_u.astype(np.float32).astype(np.float64), version)
    return Replay(mask, scores, ms, controller.summary(), updates)


def selection_metrics(cache: CollabCache, mask: np.ndarray, target_rate: float, oracle: GreedyOracle | None = None) -> dict:
    """Point figures of one selection asked to upload at `target_rate`: mIoUs, the greedy oracle at the TARGET
    count round(target_rate * N), gain over the device, gain captured, achieved rate and bytes.

    gain_captured = (collab - device) / (oracle - device) with the oracle at the target count, so uploading
    fewer frames than asked is never rewarded; None when the oracle does not beat the device.
    """
    mask = np.asarray(mask, bool)
    n, k = cache.frames, int(mask.sum())
    k_target = target_count(target_rate, n)
    oracle_mask = (oracle or GreedyOracle(cache)).mask(k_target)
    device = miou_of(cache.device_cm.sum(0))
    cloud = miou_of(cache.cloud_cm.sum(0))
    collab = miou_of(collab_cm(cache, mask))
    oracle_miou = miou_of(collab_cm(cache, oracle_mask))
    span = oracle_miou - device
    return {
        "device_miou": device, "cloud_miou": cloud, "collab_miou": collab, "gain_over_device": collab - device,
        "oracle_miou": oracle_miou, "gain_captured": (collab - device) / span if span > 1e-12 else None,
        "target_rate": target_rate, "upload_rate": k / n, "rate_error": k / n - target_rate,
        "uploads": k, "target_uploads": k_target, "frames": n,
        "bytes_up_per_frame": float(cache.bytes_up[mask].sum() / n),
        "bytes_down_per_frame": float(cache.bytes_down[mask].sum() / n),
        "upload_rate_by_condition": rate_by_condition(cache.conditions, mask),
    }


def selection_samples(cache: CollabCache, mask: np.ndarray, oracle_mask: np.ndarray, boot: Resamples, device: np.ndarray) -> dict[str, np.ndarray]:
    """Bootstrap values (B,) of one selection's figures, on `boot`'s draws; `device` = the device's (B,) mIoUs.

    The selection and the oracle's selection are held fixed; each resample re-weights frames.
    """
    collab = boot.miou(collab_frame_cms(cache, mask))
    oracle = boot.miou(collab_frame_cms(cache, oracle_mask))
    gain, span = collab - device, oracle - device
    captured = np.where(span > 1e-12, gain / np.where(span > 1e-12, span, 1.0), np.nan)
    return {"collab_miou": collab, "gain_over_device": gain, "oracle_miou": oracle, "gain_captured": captured}


@dataclass
class Evaluation:
    """What every figure of one evaluation shares: the cache, the greedy oracle (memoised by k) and one set of
    bootstrap draws (paired: the same resampled frames for every policy and rate)."""

    cache: CollabCache
    boot: Resamples
    oracle: GreedyOracle
    device: np.ndarray  # (B,) device-only mIoU per resample
    cloud: np.ndarray  # (B,) cloud-only mIoU per resample

    @classmethod
    def of(cls, cache: CollabCache, resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = 0.95) -> Evaluation:
        boot = Resamples.draw(cache.sources, resamples, seed, level)
        return cls(cache, boot, GreedyOracle(cache), boot.miou(cache.device_cm), boot.miou(cache.cloud_cm))

    def header(self) -> dict:
        """Stream-level figures and how the intervals and the oracle are defined."""
        return {
            "device_miou": miou_of(self.cache.device_cm.sum(0)), "device_miou_ci": self.boot.ci(self.device),
            "cloud_miou": miou_of(self.cache.cloud_cm.sum(0)), "cloud_miou_ci": self.boot.ci(self.cloud),
            "bootstrap": self.boot.describe(self.cache.sources), "oracle": ORACLE,
        }

    def row(self, masks: Sequence[np.ndarray], target_rate: float) -> tuple[dict, dict[str, np.ndarray]]:
        """Figures of one run (several masks: the random policy's seeds, averaged), each with its interval,
        and the bootstrap values behind them (for paired differences)."""
        row = _mean_rows([selection_metrics(self.cache, m, target_rate, self.oracle) for m in masks])
        oracle_mask = self.oracle.at_rate(target_rate)
        per_mask = [selection_samples(self.cache, m, oracle_mask, self.boot, self.device) for m in masks]
        samples = {key: np.mean([s[key] for s in per_mask], axis=0) for key in per_mask[0]}
        for key, values in samples.items():
            row[f"{key}_ci"] = self.boot.ci(values)
        return row, samples


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
        """Fresh policy, controller and U copy. The cache is read by the oracle policy only: the controller is built
        from the budget alone (a bytes budget starts from its fixed prior payload size, never from the stream's
        sizes), exactly as the HTTP path (eval/device_stream.py) builds it without any cache."""
        u = copy.deepcopy(self.uncertainty)
        params = dict(self.params)
        if self.policy == "random":
            params.setdefault("seed", self.seed)
        if self.policy == "oracle":
            if cache is None or oracle_frames is None:
                raise ValueError("the oracle policy needs the cache of the stream and the oracle's frames")
            params["gains"] = dict(enumerate(frame_gains(cache).tolist()))
        policy = make_policy(self.policy, u, **params)
        if self.policy == "oracle":
            controller: Controller = FixedSelection(np.flatnonzero(oracle_frames), cache.frames)
        elif self.budget.mode == HINDSIGHT:
            controller = FixedSelection([], cache.frames if cache is not None else None)  # scores only; see replay_run
        else:
            controller = make_controller(self.budget)
        return policy, controller, u

    def dcam(self) -> DcamConfig | None:
        if self.dcam_alpha > 0 and self.uncertainty is not None:
            # the cloud fits U_new with the settings the device's U was fitted with (its metadata), not defaults
            return DcamConfig(self.dcam_alpha, self.uncertainty.u, DcamSettings.from_meta(self.uncertainty.meta))
        return None

    def target_rate(self, controller_summary: dict | None = None) -> float:
        """The rate this run was asked for: 1 / 0 for all / none, the rate a bytes budget affords by the end of
        the stream (its controller's running payload estimate), else the budget's rate."""
        if self.policy in ("all", "none"):
            return 1.0 if self.policy == "all" else 0.0
        if self.budget.bytes_per_s is not None:
            if controller_summary is None:
                raise ValueError("a bytes budget's target rate comes from its controller's summary")
            return float(controller_summary["target_rate"])
        return float(self.budget.rate or 0.0)


def replay_run(cache: CollabCache, run: PolicyRun, oracle: GreedyOracle | None = None) -> Replay:
    """Replay one run; with budget mode 'hindsight' the scores come from a replay and the k = round(r N)
    best-scored frames of the whole stream are taken (a per-stream threshold, as ACDC's tau_s of eq. 10
    set to hit the rate: not causal, evaluation only, isolates a score's ranking from the controller)."""
    oracle_mask = (oracle or GreedyOracle(cache)).at_rate(run.budget.rate or 0.0) if run.policy == "oracle" else None
    policy, controller, _ = run.make(cache, oracle_mask)
    if run.budget.mode != HINDSIGHT or run.policy == "oracle":
        return replay(cache, policy, controller, run.dcam())
    rep = replay(cache, policy, controller, None)
    if policy.fixed is not None:
        return rep
    rep.mask = top_k_mask(rep.scores, target_count(run.budget.rate or 0.0, cache.frames))
    rep.controller = {"target_rate": run.budget.rate, "mode": HINDSIGHT}
    return rep


def top_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """The k highest finite scores (earlier frame first among ties)."""
    order = np.argsort(-scores, kind="stable")
    order = order[np.isfinite(scores[order])][:k]
    mask = np.zeros(len(scores), dtype=bool)
    mask[order] = True
    return mask


def run_cached(cache: CollabCache, run: PolicyRun, oracle: GreedyOracle | None = None) -> tuple[dict, Replay]:
    """One (policy, budget) over the cache; returns (point metrics at the run's target rate, replay)."""
    oracle = oracle or GreedyOracle(cache)
    rep = replay_run(cache, run, oracle)
    metrics = selection_metrics(cache, rep.mask, run.target_rate(rep.controller), oracle)
    metrics.update(policy=run.policy, score_ms=float(np.median(rep.score_ms)), dcam_updates=rep.u_updates)
    return metrics, rep


def median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if len(values) else None


def run_runtime(
    dataset: SegDataset, cache: CollabCache, run: PolicyRun, device_model: nn.Module, cloud_model: nn.Module, codec: str,
    limit: int | None = None, send_device_probs: bool = False, on_frame: Callable[[], None] | None = None,
) -> dict:
    """The single-run path: DeviceRuntime + InProcessLink over the stream, real encoded bytes."""
    oracle_mask = GreedyOracle(cache).at_rate(run.budget.rate or 0.0) if run.policy == "oracle" else None
    policy, controller, u = run.make(cache, oracle_mask)
    dcam = run.dcam()
    service = CloudService(cloud_model, dataset.classes, dcam_alpha=dcam.alpha if dcam else 0.0,
                           initial_u=dcam.initial_u if dcam else None, dcam_settings=dcam.settings if dcam else None)
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


def sweep(
    cache: CollabCache, runs: list[PolicyRun], labels: list[str] | None = None, resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0, level: float = 0.95, baselines: Sequence[str] = DIFF_BASELINES,
) -> dict:
    """Every run over the cache, compared at its target rate: collab mIoU and achieved rate, the greedy oracle at
    the target count, gain over the device and gain captured, each with a paired bootstrap interval; each
    policy's paired difference to `baselines` at the same rate, and the AUC over 2-30% target rates.

    Random is averaged over RANDOM_SEEDS seeds (figures and bootstrap values alike). `seed` seeds the bootstrap.
    """
    labels = labels or [r.policy for r in runs]
    ev = Evaluation.of(cache, resamples, seed, level)
    rows, samples = [], []
    for label, run in zip(labels, runs, strict=True):
        seeds = range(RANDOM_SEEDS) if run.policy == "random" else [run.seed]
        reps = [replay_run(cache, dataclasses.replace(run, seed=sd), ev.oracle) for sd in seeds]
        row, row_samples = ev.row([rep.mask for rep in reps], run.target_rate(reps[0].controller))
        row.update(policy=label, controller=run.budget.mode, seeds=len(reps), dcam_updates=float(np.mean([r.u_updates for r in reps])),
                   score_ms=float(np.median(np.concatenate([r.score_ms for r in reps]))))
        if len(reps) > 1:
            row["collab_miou_std"] = float(np.std([miou_of(collab_cm(cache, r.mask)) for r in reps]))  # spread over seeds
        rows.append(row)
        samples.append(row_samples)
    add_differences(rows, samples, ev.boot, baselines)
    return {**ev.header(), "rows": rows, "auc": auc_summary(rows, samples, ev.boot, baselines)}


def add_differences(rows: list[dict], samples: list[dict], boot: Resamples, baselines: Sequence[str]) -> None:
    """row["vs"][b] = collab mIoU minus baseline b's at the same target rate, with its paired interval."""
    index = {(r["policy"], r["target_rate"]): i for i, r in enumerate(rows)}
    for row, s in zip(rows, samples, strict=True):
        row["vs"] = {}
        for b in baselines:
            j = index.get((b, row["target_rate"]))
            if j is None or rows[j]["policy"] == row["policy"]:
                continue
            row["vs"][b] = {"collab_miou_delta": row["collab_miou"] - rows[j]["collab_miou"],
                            "ci": boot.ci(s["collab_miou"] - samples[j]["collab_miou"])}


def auc_summary(rows: list[dict], samples: list[dict], boot: Resamples, baselines: Sequence[str], span: tuple[float, float] = AUC_SPAN) -> dict:
    """Per policy: the area under collab mIoU vs TARGET rate over the swept rates in `span` (trapezoid), divided
    by the extent of those rates: the curve's mean height there. With its interval, and paired differences
    to `baselines` swept at the same rates."""
    curves: dict[str, list[tuple[float, float, np.ndarray]]] = {}
    for row, s in zip(rows, samples, strict=True):
        curves.setdefault(row["policy"], []).append((row["target_rate"], row["collab_miou"], s["collab_miou"]))
    per: dict[str, dict] = {}
    draws: dict[str, np.ndarray] = {}
    for policy, pts in curves.items():
        rates = [p[0] for p in pts]
        value = rate_auc(rates, [p[1] for p in pts], span)
        if value is None:
            continue
        draws[policy] = rate_auc(rates, np.stack([p[2] for p in pts]), span)
        inside = sorted(r for r in rates if span[0] - 1e-9 <= r <= span[1] + 1e-9)
        per[policy] = {"auc": value, "auc_ci": boot.ci(draws[policy]), "rates": inside}
    for policy, entry in per.items():
        entry["vs"] = {b: {"auc_delta": entry["auc"] - per[b]["auc"], "ci": boot.ci(draws[policy] - draws[b])}
                       for b in baselines if b in per and b != policy and per[b]["rates"] == entry["rates"]}
    return {"span": list(span), "x": "target upload rate",
            "definition": "trapezoid area under collab mIoU vs target rate over the swept rates in span, divided by their extent",
            "policies": per}


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
