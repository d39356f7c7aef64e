"""ACDC Table 5 analogue: what CFE adds to "cloud or device", at the same uploads, in absolute terms.

Every variant's per-frame results come from the one runtime (eval/cache.py `build_cache` with the variant's fuse
step: the map a frame shows when the cloud does not answer, and the one it shows when it does). The upload
decisions of each (policy, target rate) are replayed once, on the base cache (the policies read the device's
coarse probabilities, which no fuse step changes), and applied to every variant, so all variants are compared
on the very same uploaded frames; intervals are paired bootstrap intervals over source frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tandemseg.device.budget import BudgetSpec
from tandemseg.device.uncertainty import UncertaintyMatrix
from tandemseg.eval.bootstrap import DEFAULT_RESAMPLES, Resamples
from tandemseg.eval.boundary import boundary_f, resampled_boundary_f
from tandemseg.eval.cache import CollabCache, collab_frame_cms
from tandemseg.eval.metrics import miou_of
from tandemseg.eval.replay import PolicyRun, replay_run

BASE = "base"  # "cloud or device": no CFE


@dataclass
class Variant:
    name: str  # e.g. 'cfe', 'sparse-refine', 'point', 'dense'
    mode: str  # 'none' | 'refine' | 'cfe'
    cache: CollabCache


def upload_masks(cache: CollabCache, policies: Sequence[str], rates: Sequence[float], um: UncertaintyMatrix | None,
                 seed: int = 0) -> dict[tuple[str, float], np.ndarray]:
    """(policy, rate) -> (N,) uploaded, from causal replays of the runtime (window controller) on `cache`."""
    return {(p, r): replay_run(cache, PolicyRun(p, BudgetSpec(rate=r), um, seed)).mask for p in policies for r in rates}


def _selected_bf(cache: CollabCache, mask: np.ndarray) -> np.ndarray:
    return np.where(mask[:, None], cache.cloud_bf, cache.device_bf)  # (N, 4)


def fusion_table(variants: Sequence[Variant], masks: dict[tuple[str, float], np.ndarray], resamples: int = DEFAULT_RESAMPLES,
                 seed: int = 0) -> dict:
    """Rows per variant: device-only (no upload) and every (policy, rate), mIoU and boundary F with 95% intervals and
    the paired difference to the base variant; plus each variant's CFE cost (fuse ms, reply bytes)."""
    base = next(v for v in variants if v.name == BASE)
    boot = Resamples.draw(base.cache.sources, resamples, seed)
    none = np.zeros(base.cache.frames, bool)
    settings = [("device only", 0.0, none)] + [(p, r, m) for (p, r), m in masks.items()]
    base_cms = {label_of(p, r): collab_frame_cms(base.cache, m) for p, r, m in settings}
    base_samples = {key: boot.miou(cms) for key, cms in base_cms.items()}
    rows = []
    for v in variants:
        for policy, rate, mask in settings:
            key = label_of(policy, rate)
            cms = collab_frame_cms(v.cache, mask)
            samples, miou = boot.miou(cms), miou_of(cms.sum(0))
            bf = _selected_bf(v.cache, mask)
            rows.append({
                "variant": v.name, "mode": v.mode, "policy": policy, "target_rate": rate, "upload_rate": float(mask.mean()),
                "miou": miou, "miou_ci": boot.ci(samples),
                "delta_vs_base": miou - miou_of(base_cms[key].sum(0)), "delta_vs_base_ci": boot.ci(samples - base_samples[key]),
                "boundary_f": boundary_f(bf), "boundary_f_ci": boot.ci(resampled_boundary_f(bf, boot.weights)),
                "bytes_down_per_upload": float(v.cache.bytes_down[mask].mean()) if mask.any() else None,
            })
    costs = {v.name: {"fuse_local_ms_median": v.cache.info.get("fuse_local_ms_median"),
                      "fuse_answered_ms_median": v.cache.info.get("fuse_answered_ms_median"),
                      "device_ms_median": float(np.median(v.cache.device_ms)),
                      "bytes_down_mean": float(v.cache.bytes_down.mean())} for v in variants}
    return {"rows": rows, "costs": costs, "bootstrap": boot.describe(base.cache.sources), "frames": base.cache.frames}


def label_of(policy: str, rate: float) -> str:
    return f"{policy}@{rate:g}"
