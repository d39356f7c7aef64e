"""`tandemseg fit-uncertainty` and `tandemseg collab`: thin wrappers over device.uncertainty and eval.collab."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import typer
from rich.table import Table

from tandemseg.cli.common import console, metrics_table, out, progress, write_json
from tandemseg.cli.models import recipe_command
from tandemseg.data.spec import open_dataset
from tandemseg.device.budget import BudgetSpec, check_rate
from tandemseg.device.policies import POLICIES
from tandemseg.device.uncertainty import (
    FEATURES,
    KernelSpec,
    UncertaintyMatrix,
    fit_from_stats,
    load_stats,
    model_frame_stats,
    save_stats,
)
from tandemseg.errors import SpecError, TandemsegError
from tandemseg.eval import collab as C
from tandemseg.models.checkpoint import load_checkpoint
from tandemseg.wire.payload import parse_codec

U_POLICIES = ("acdc", "acdc_ent")
SWEEP_POLICIES = ("acdc", "acdc_ent", "entropy", "cema", "confidence", "random", "oracle")


def parse_list(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise SpecError(f"{what}: give a comma-separated list, got {text!r}")
    return items


def parse_rates(text: str) -> list[float]:
    try:
        return [check_rate(float(t)) for t in parse_list(text, "--sweep")]
    except ValueError:
        raise SpecError(f"--sweep takes comma-separated fractions such as 0.05,0.1,0.2, got {text!r}") from None


def fit_uncertainty(
    ckpt: Path = typer.Option(..., help="device checkpoint folder"),
    data: str = typer.Option("synthetic", help="dataset spec: synthetic | camvid:PATH | ..."),
    split: str = typer.Option("train", help="split to fit on (never test)"),
    shifts: str = typer.Option("clean", help="calibration conditions, comma-separated; frame i (pass p) uses number (i+p) mod k"),
    passes: int = typer.Option(1, help="passes over the split (each pass shifts the condition cycle by one)"),
    out_path: Path = typer.Option(..., "--out", help="where to write U (.safetensors)"),
    lam: str = typer.Option("0.5", "--lambda", help="lambda of eq. 6 (weight of the negatives), or 'auto': best rank correlation with device error on the fit frames"),
    gamma: float = typer.Option(1.0, help="gamma of eq. 6: regulariser strength (matters only with --kernel)"),
    stats: str = typer.Option("pixels", help="reading of eq. 5: pixels (1/HW, printed) | set (mean over each set)"),
    feature: str = typer.Option("probs", help="what the score reads: probs (eq. 9 as printed: q) | entropy (q of E*p) | pixel (eq. 9 per pixel, averaged)"),
    kernel: bool = typer.Option(False, help="add the Gaussian-kernel term Q(U) of eq. 7-8"),
    sigma: float = typer.Option(1.0, help="kernel bandwidth sigma (eq. 8)"),
    limit: int = typer.Option(None, help="use the first N frames only"),
    seed: int = typer.Option(0, help="seed of the shifts' randomness"),
    cache_dir: Path = typer.Option(None, help="cache eq. 5 statistics here (refits with other lambda/gamma/kernel reuse them)"),
    threads: int = typer.Option(1, help="torch CPU threads"),
    json_path: Path = typer.Option(None, "--json", help="write the fit diagnostics here"),
) -> None:
    """Fit the uncertainty matrix U (ACDC eq. 5-8, 19) on a device model's outputs."""
    set_threads(threads)
    if split == "test":
        raise TandemsegError("--split test is refused: U is fitted on training (calibration) data, never on the test split")
    if passes < 1:
        raise SpecError(f"--passes must be >= 1, got {passes}")
    parse_lambda(lam)
    if feature not in FEATURES:
        raise SpecError(f"unknown --feature {feature!r}; valid: {', '.join(FEATURES)}")
    conditions = parse_list(shifts, "--shifts")
    datasets = [open_dataset(data, split, c, seed=seed) for c in conditions]
    ck = load_checkpoint(ckpt, expect_kind="device", expect_classes=datasets[0].classes)
    n = len(datasets[0]) if limit is None else min(limit, len(datasets[0]))
    key = hashlib.sha1(json.dumps(["v3", str(Path(ckpt).resolve()), C.checkpoint_identity(ckpt), data, split, conditions, passes, n, seed]).encode()).hexdigest()[:16]
    cached = cache_dir / f"ustats-{key}.npz" if cache_dir else None
    if cached is not None and cached.is_file():
        stats_list = load_stats(cached)
        console.print(f"[dim]eq. 5 statistics from {cached}[/dim]")
    else:
        stats_list = []
        with progress() as bar:
            task = bar.add_task("eq. 5 statistics", total=n * passes, info="")
            for p in range(passes):
                for i in range(n):
                    s = datasets[(i + p) % len(datasets)][i]
                    stats_list.append(model_frame_stats(ck.model, s.image, s.label, datasets[0].classes.ignore_index))
                    bar.advance(task)
        if cached is not None:
            save_stats(cached, stats_list)
    lam_value = parse_lambda(lam)
    kspec = KernelSpec(sigma=sigma) if kernel else None
    meta = {"device_ckpt": str(ckpt), "device_commit": ck.card.get("commit"), "device_created": ck.card.get("created"),
            "data": data, "split": split, "shifts": conditions, "passes": passes, "recipe": recipe_command()}
    try:
        um, diag = fit_from_stats(stats_list, datasets[0].classes, lam_value, gamma, stats, kspec, meta, feature)
    except ValueError as e:
        raise SpecError(str(e)) from None
    um.save(out_path)
    out.print(f"U ({um.num_classes}x{um.num_classes}) fitted on {diag['frames']} frames -> {out_path}; "
              f"score vs device error: Spearman {_fmt(diag['spearman'])}, AUROC(worst 25%) {_fmt(diag['auroc_worst_quarter'])}")
    write_json(json_path, {"out": str(out_path), **um.meta, "fit": diag})


def parse_lambda(text: str) -> float | None:
    """A lambda in [0, 1], or None for 'auto'."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise SpecError(f"--lambda takes a number in [0, 1] or 'auto', got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise SpecError(f"--lambda must be in [0, 1], got {value}")
    return value


def set_threads(threads: int) -> None:
    if threads < 0:
        raise SpecError(f"--threads must be >= 0 (0 = torch's default), got {threads}")
    if threads:
        torch.set_num_threads(threads)


def _fmt(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def collab(
    data: str = typer.Option("synthetic", help="dataset spec"),
    split: str = typer.Option("val", help="split to evaluate"),
    shift: str = typer.Option("clean", help="clean | NAME:SEVERITY | dusk | night | stream:SPEC"),
    device_ckpt: Path = typer.Option(..., help="device checkpoint folder"),
    cloud_ckpt: Path = typer.Option(..., help="cloud checkpoint folder"),
    uncertainty: Path = typer.Option(None, help="U file from `tandemseg fit-uncertainty` (needed by acdc policies)"),
    variant: list[str] = typer.Option([], help="extra U for sweeps, NAME=PATH: adds policy acdc:NAME (repeatable)"),
    policy: str = typer.Option("acdc", help=f"upload policy: {', '.join(POLICIES)}"),
    rate: float = typer.Option(0.1, help="target upload rate (fraction of frames)"),
    controller: str = typer.Option("window", help="budget controller: window | sa (causal) | hindsight (per-stream top-k by score: evaluation only)"),
    bytes_per_s: float = typer.Option(None, help="bytes/s budget instead of --rate (token bucket at --fps)"),
    fps: float = typer.Option(10.0, help="frame rate of the stream for --bytes-per-s"),
    codec: str = typer.Option("png", help="frame codec: png | jpeg:Q | webp:Q"),
    sweep: str = typer.Option(None, help="comma-separated rates: run every policy at each and plot mIoU vs upload rate"),
    policies: str = typer.Option(",".join(SWEEP_POLICIES), help="policies of a sweep"),
    dcam_alpha: float = typer.Option(0.0, help="DCAM update weight alpha (eq. 14); 0 = off"),
    send_device_probs: bool = typer.Option(False, help="upload the device's coarse probabilities too (DCAM needs them)"),
    limit: int = typer.Option(None, help="first N frames only"),
    seed: int = typer.Option(0, help="seed of shifts and of the random policy"),
    cache_dir: Path = typer.Option(None, help="keep per-frame device/cloud results here and reuse them"),
    plot: Path = typer.Option(None, help="sweep: where to draw the curves (default: next to --json)"),
    threads: int = typer.Option(1, help="torch CPU threads (latencies are reported at this setting)"),
    json_path: Path = typer.Option(None, "--json", help="write the results here"),
) -> None:
    """Device on every frame, cloud on the frames the policy uploads; mIoU, oracle, gain captured, bytes, latency."""
    set_threads(threads)
    # every input is checked before the (slow) per-frame pass starts
    parse_codec(codec)
    check_rate(rate)
    if not 0.0 <= dcam_alpha <= 1.0:
        raise SpecError(f"--dcam-alpha must be in [0, 1], got {dcam_alpha}")
    if controller not in ("window", "sa", "hindsight"):
        raise SpecError(f"unknown --controller {controller!r}; valid: window, sa, hindsight")
    if controller == "hindsight" and not sweep:
        raise SpecError("--controller hindsight is not causal and exists for sweeps only (it cannot drive the device runtime)")
    rates = parse_rates(sweep) if sweep else None
    names = parse_list(policies, "--policies") if sweep else [policy]
    for name in names:
        if name not in POLICIES:
            raise SpecError(f"unknown policy {name!r}; valid: {', '.join(POLICIES)}")
    if not sweep and policy in U_POLICIES and uncertainty is None:
        raise SpecError(f"policy {policy!r} needs an uncertainty matrix: pass --uncertainty U.safetensors (from `tandemseg fit-uncertainty`)")
    dataset = open_dataset(data, split, shift, seed=seed)
    dev = load_checkpoint(device_ckpt, expect_kind="device", expect_classes=dataset.classes)
    cloud = load_checkpoint(cloud_ckpt, expect_kind="cloud", expect_classes=dataset.classes)
    um = UncertaintyMatrix.load(uncertainty, expect_classes=dataset.classes) if uncertainty else None
    variants = parse_variants(variant, dataset.classes)
    if dcam_alpha > 0 and um is not None and um.feature != "probs":
        raise SpecError(f"--dcam-alpha needs a U fitted on plain probabilities (DCAM's U_new is); {uncertainty} uses feature {um.feature!r}")
    send = send_device_probs or dcam_alpha > 0
    cache = load_or_build_cache(dataset, dev.model, cloud.model, codec, limit, send, cache_dir,
                                {"data": data, "split": split, "shift": shift, "seed": seed, "device": C.checkpoint_identity(device_ckpt),
                                 "cloud": C.checkpoint_identity(cloud_ckpt)})
    budget = BudgetSpec(rate=rate, mode=controller, bytes_per_s=bytes_per_s, fps=fps)
    header = {"data": data, "split": split, "shift": shift, "codec": codec, "device_ckpt": str(device_ckpt), "cloud_ckpt": str(cloud_ckpt),
              "uncertainty": str(uncertainty) if uncertainty else None, "u_meta": um.meta if um else None,
              "dcam_alpha": dcam_alpha, "controller": controller, **C.cache_info(cache)}
    if sweep:
        result = run_sweep(cache, rates, names, um, variants, budget, seed, dcam_alpha)
        payload = {**header, **result}
        print_sweep(payload)
        plot_path = plot or (json_path.with_suffix(".png") if json_path else None)
        if plot_path:
            from tandemseg.eval.plots import plot_sweep

            plot_sweep(payload, plot_path, title=f"{data} {split} ({shift})")
            console.print(f"[dim]wrote {plot_path}[/dim]")
        write_json(json_path, payload)
        return
    run = C.PolicyRun(policy, budget, um, seed, dcam_alpha)
    cached, cached_rep = C.run_cached(cache, run)
    with progress() as bar:
        task = bar.add_task(f"runtime {policy}", total=cache.frames, info="")
        rt = C.run_runtime(dataset, cache, run, dev.model, cloud.model, codec, limit, send, on_frame=lambda: bar.advance(task))
    mask = rt.pop("mask")
    metrics = C.selection_metrics(cache, mask)
    payload = {
        **header, **metrics, "policy": policy, "target_rate": rt["controller"]["target_rate"],
        "rate_error": metrics["upload_rate"] - rt["controller"]["target_rate"],
        "collab_miou": rt["collab_miou"], "collab_miou_cached": cached["collab_miou"],
        "paths_agree": bool(np.array_equal(mask, cached_rep.mask) and abs(rt["collab_miou"] - cached["collab_miou"]) < 1e-12),
        **{k: v for k, v in rt.items() if k != "collab_miou"},
        "cloud_gflops_per_frame_effective": (header["cloud_gflops"] or 0) * metrics["upload_rate"],
    }
    span = payload["oracle_miou"] - payload["device_miou"]
    payload["gain_captured"] = (payload["collab_miou"] - payload["device_miou"]) / span if span > 1e-12 else None
    print_single(payload)
    write_json(json_path, payload)


def parse_variants(items: list[str], classes) -> dict[str, UncertaintyMatrix]:
    out = {}
    for item in items:
        name, eq, path = item.partition("=")
        if not eq or not name or not path:
            raise SpecError(f"--variant takes NAME=PATH (e.g. lam0.9=u-lam0.9.safetensors), got {item!r}")
        out[name] = UncertaintyMatrix.load(path, expect_classes=classes)
    return out


def load_or_build_cache(dataset, device_model, cloud_model, codec: str, limit, send: bool, cache_dir: Path | None, ident: dict) -> C.CollabCache:
    n = len(dataset) if limit is None else min(limit, len(dataset))
    key = C.cache_key({**ident, "codec": codec, "frames": n, "send": send})
    path = cache_dir / f"collab-{key}.npz" if cache_dir else None
    if path is not None and path.is_file():
        console.print(f"[dim]per-frame results from {path}[/dim]")
        return C.CollabCache.load(path)
    with progress() as bar:
        task = bar.add_task("device + cloud per frame", total=n, info="")
        cache = C.build_cache(dataset, device_model, cloud_model, codec, limit, send, on_frame=lambda: bar.advance(task))
    cache.info.update(ident)
    if path is not None:
        cache.save(path)
    return cache


def run_sweep(cache, rates, names, um, variants, budget: BudgetSpec, seed: int, dcam_alpha: float) -> dict:
    runs, labels = [], []
    for r in rates:
        b = BudgetSpec(rate=r, mode=budget.mode)
        for name in names:
            if name in U_POLICIES and um is None:
                continue  # no U given: the U-based policies are left out of the sweep
            runs.append(C.PolicyRun(name, b, um, seed, dcam_alpha))
            labels.append(name)
        for vname, vu in variants.items():
            runs.append(C.PolicyRun("acdc", b, vu, seed, dcam_alpha))
            labels.append(f"acdc:{vname}")
    result = C.sweep(cache, runs, labels)
    return {**result, "rates": rates}


def print_sweep(payload: dict) -> None:
    table = Table(title=f"device {payload['device_miou']:.4f}  cloud {payload['cloud_miou']:.4f}  ({payload['shift']})")
    for col in ("policy", "target", "rate", "collab mIoU", "oracle", "gain captured", "B up/frame"):
        table.add_column(col, justify="right")
    for r in payload["rows"]:
        table.add_row(r["policy"], f"{r['target_rate']:.2f}", f"{r['upload_rate']:.3f}", f"{r['collab_miou']:.4f}",
                      f"{r['oracle_miou']:.4f}", _fmt(r["gain_captured"], 2), f"{r['bytes_up_per_frame']:.0f}")
    out.print(table)


def print_single(p: dict) -> None:
    keys = ("device_miou", "cloud_miou", "collab_miou", "oracle_miou", "gain_captured", "upload_rate", "bytes_up_per_frame",
            "device_ms", "score_ms", "cloud_ms", "device_gflops", "cloud_gflops", "paths_agree")
    out.print(metrics_table(f"{p['policy']} at target {p['target_rate']:.3f} ({p['shift']})", p, keys))
