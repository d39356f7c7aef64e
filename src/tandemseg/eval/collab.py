"""Collaborative evaluation: how much of the cloud's accuracy does selective offloading buy?

Every number comes from the one runtime (device/runtime.py):

* sweeps: the device and the cloud run ONCE per frame (eval/cache.py, through the runtime), then every
  (policy, rate) is a replay of the runtime with cached steps (eval/replay.py);
* single runs (`run_runtime`): the runtime with the live device model and the real cloud model behind an
  `InProcessLink`, real encoded bytes; `tandemseg device` swaps in the HTTP link (eval/device_stream.py).

mIoU is dataset-level (one confusion matrix over the stream). The final map of an answered upload is the
cloud's prediction, otherwise the device's (fusion comes later, as a runtime step).

Policies are compared at the same TARGET rate r, in absolute terms: every row reports `collab_miou` and
the achieved `upload_rate` next to r, and `auc` summarises a policy's curve over 2-30% target rates
(eval/bootstrap.py). The reference is the greedy oracle at the target count k = round(r N)
(eval/oracle.py). `gain_captured` = (collab - device) / (oracle at k - device): a policy that uploads fewer
frames than asked is measured against the oracle at the count it was asked for. Every figure carries a 95%
bootstrap interval over source frames, with the same draws for every policy (paired), so differences get
their own intervals.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from tandemseg.cloud.service import CloudService, ModelSegmenter
from tandemseg.codec.model import FeatureCodec
from tandemseg.data.base import SegDataset
from tandemseg.device.budget import BudgetSpec
from tandemseg.device.link import InProcessLink
from tandemseg.device.runtime import DeviceRuntime
from tandemseg.device.steps import ExitModel, FuseStep, make_device_steps
from tandemseg.device.uncertainty import UncertaintyMatrix
from tandemseg.eval.bootstrap import AUC_SPAN, DEFAULT_RESAMPLES, Resamples, rate_auc
from tandemseg.eval.cache import CollabCache, collab_cm, collab_frame_cms
from tandemseg.eval.metrics import ConfusionMatrix, miou_of
from tandemseg.eval.oracle import ORACLE, GreedyOracle, target_count
from tandemseg.eval.replay import PolicyRun, Replay, replay_run

RANDOM_SEEDS = 5  # the random policy is averaged over this many seeds in sweeps
DIFF_BASELINES = ("random", "entropy")  # sweeps report every policy's paired difference to these
U_POLICIES = ("acdc", "acdc_ent")  # policies that read an uncertainty matrix
SWEEP_POLICIES = ("acdc", "acdc_ent", "entropy", "cema", "confidence", "random", "oracle")


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
    feature_codec: FeatureCodec | None = None, exit_model: ExitModel | None = None, fuse: FuseStep | None = None,
) -> dict:
    """The single-run path: DeviceRuntime + InProcessLink over the stream, real encoded bytes (images, or JD features
    with codec 'features'); with `exit_model` the device is a MESS network whose confident early exits stay local;
    with `fuse` (CFE) every frame's map is the fuse step's."""
    oracle_mask = GreedyOracle(cache).at_rate(run.budget.rate or 0.0) if run.policy == "oracle" else None
    policy, controller, u = run.make(cache, oracle_mask)
    dcam = run.dcam()
    service = CloudService(ModelSegmenter(cloud_model, feature_codec), dataset.classes, dcam_alpha=dcam.alpha if dcam else 0.0,
                           initial_u=dcam.initial_u if dcam else None, dcam_settings=dcam.settings if dcam else None)
    send_probs = send_device_probs or dcam is not None
    model_step, payload = make_device_steps(device_model, codec, "dev0", send_probs, feature_codec, exit_model)
    runtime = DeviceRuntime(model_step, policy, controller, InProcessLink(service), payload=payload, uncertainty=u, fuse=fuse)
    cm = ConfusionMatrix(dataset.classes.num_classes, dataset.classes.ignore_index)
    n = cache.frames if limit is None else min(limit, cache.frames)
    results = []
    for i in range(n):
        s = dataset[i]
        res = runtime.finish(runtime.process(s.image, i))
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
        "exit_histogram": dict(Counter(r.exit for r in results)),
        "fuse_ms_local": median([r.fuse_ms for r in results if r.provenance != "cloud"] or [0.0]),
        "fuse_ms_answered": median([r.fuse_ms for r in up] or [0.0]),
        "device_gflops_per_frame": float(np.mean([r.device_gflops for r in results])) if results[0].device_gflops is not None else None,
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


def single_run(
    dataset: SegDataset, cache: CollabCache, run: PolicyRun, device_model: nn.Module, cloud_model: nn.Module, codec: str,
    limit: int | None = None, send_device_probs: bool = False, resamples: int = DEFAULT_RESAMPLES, bootstrap_seed: int = 0,
    on_frame: Callable[[], None] | None = None, feature_codec: FeatureCodec | None = None, exit_model: ExitModel | None = None,
    fuse: FuseStep | None = None,
) -> dict:
    """One (policy, budget) through the live runtime (`run_runtime`), with the figures a sweep row has: the runtime's
    own mIoU and bytes, and the intervals, oracle and gain from the cache's per-frame results at its decisions.

    With `exit_model` (MESS) the device's maps are not the cache's (early exits answer some frames), so only the
    runtime's own figures are reported, next to the plain models' device and cloud mIoU for reference."""
    ev = Evaluation.of(cache, resamples, bootstrap_seed)
    rt = run_runtime(dataset, cache, run, device_model, cloud_model, codec, limit, send_device_probs, on_frame, feature_codec, exit_model, fuse)
    mask = rt.pop("mask")
    if exit_model is not None:
        return {**ev.header(), "policy": run.policy, "upload_rate": float(mask.mean()), "target_rate": run.target_rate(rt["controller"]),
                "mess": exit_model.config.to_json(), **rt}
    row, _ = ev.row([mask], run.target_rate(rt["controller"]))
    out = {**ev.header(), **row, "policy": run.policy, **rt,
           "cloud_gflops_per_frame_effective": (cache.info.get("cloud_gflops") or 0) * row["upload_rate"]}
    span = out["oracle_miou"] - out["device_miou"]
    out["gain_over_device"] = out["collab_miou"] - out["device_miou"]
    out["gain_captured"] = out["gain_over_device"] / span if span > 1e-12 else None
    return out


def sweep_policies(
    cache: CollabCache, rates: Sequence[float], names: Sequence[str], um: UncertaintyMatrix | None,
    variants: dict[str, UncertaintyMatrix], mode: str = "window", seed: int = 0, dcam_alpha: float = 0.0,
    resamples: int = DEFAULT_RESAMPLES, bootstrap_seed: int = 0,
) -> dict:
    """`sweep` over every policy in `names` at every target rate, with `acdc` once more per U variant (ablations,
    labelled 'acdc:<name>'). Without a U the U-based policies are left out."""
    runs, labels = [], []
    for r in rates:
        budget = BudgetSpec(rate=r, mode=mode)
        for name in names:
            if name in U_POLICIES and um is None:
                continue
            runs.append(PolicyRun(name, budget, um, seed, dcam_alpha))
            labels.append(name)
        for vname, vu in variants.items():
            runs.append(PolicyRun("acdc", budget, vu, seed, dcam_alpha))
            labels.append(f"acdc:{vname}")
    return {**sweep(cache, runs, labels, resamples=resamples, seed=bootstrap_seed), "rates": list(rates)}
