"""`tandemseg fit-uncertainty` and `tandemseg collab`: thin wrappers over device.uncertainty and eval.collab."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.table import Table

from tandemseg.cli.common import console, out, progress, write_json
from tandemseg.cli.models import recipe_command
from tandemseg.codec.checkpoint import load_codec
from tandemseg.data.base import SegDataset
from tandemseg.data.shifts.spec import parse_shift
from tandemseg.data.shifts.stream import RepeatedSchedules
from tandemseg.data.spec import open_dataset
from tandemseg.device.budget import BudgetSpec, check_rate
from tandemseg.device.policies import POLICIES
from tandemseg.device.steps import FUSION_MODES, FuseStep, load_exit_model, make_fuse_step
from tandemseg.device.uncertainty import (
    FEATURES,
    KernelSpec,
    UncertaintyMatrix,
    fit_from_stats,
)
from tandemseg.errors import SpecError, TandemsegError
from tandemseg.eval import cache as K
from tandemseg.eval import collab as C
from tandemseg.eval import replay as R
from tandemseg.eval.bootstrap import DEFAULT_RESAMPLES
from tandemseg.eval.calibration import load_or_compute_stats
from tandemseg.fusion.checkpoint import load_fusion
from tandemseg.models.checkpoint import load_checkpoint
from tandemseg.wire.payload import FEATURES as FEATURE_UPLOAD
from tandemseg.wire.payload import parse_upload_codec


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
    with progress() as bar:
        task = bar.add_task("eq. 5 statistics", total=n * passes, info="")
        stats_list, cached = load_or_compute_stats(ck.model, ckpt, data, split, conditions, datasets, passes, n, seed, cache_dir,
                                                   on_frame=lambda: bar.advance(task))
    if cached is not None:
        console.print(f"[dim]eq. 5 statistics from {cached}[/dim]")
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
    codec: str = typer.Option("png", help="upload codec: png | jpeg:Q | webp:Q | features (JD bitstreams; needs --feature-codec)"),
    feature_codec: Path = typer.Option(None, help="JD feature codec checkpoint trained for --device-ckpt (with --codec features)"),
    mess_ckpt: Path = typer.Option(None, help="single runs: a searched MESS checkpoint (`exits search`) as the device; confident early exits stay local"),
    fusion: str = typer.Option("none", help="ACDC CFE: none (cloud's map or device's) | refine (refined device maps) | cfe (refine + fuse with the cloud's probabilities)"),
    fusion_ckpt: Path = typer.Option(None, help="CFE checkpoint trained for --device-ckpt (`tandemseg fusion train`), for --fusion refine|cfe"),
    sweep: str = typer.Option(None, help="comma-separated rates: run every policy at each and plot mIoU vs upload rate"),
    policies: str = typer.Option(",".join(C.SWEEP_POLICIES), help="policies of a sweep"),
    dcam_alpha: float = typer.Option(0.0, help="DCAM update weight alpha (eq. 14); 0 = off"),
    send_device_probs: bool = typer.Option(False, help="upload the device's coarse probabilities too (DCAM needs them)"),
    limit: int = typer.Option(None, help="first N frames only (of each pass with --repeat-schedules)"),
    seed: int = typer.Option(0, help="seed of shifts and of the random policy"),
    cache_dir: Path = typer.Option(None, help="keep per-frame device/cloud results here and reuse them"),
    plot: Path = typer.Option(None, help="sweep: where to draw the curves (default: next to --json)"),
    threads: int = typer.Option(1, help="torch CPU threads (latencies are reported at this setting)"),
    json_path: Path = typer.Option(None, "--json", help="write the results here"),
    # Annotated defaults: callers of this function in Python (cli/demo.py) get plain values for these
    repeat_schedules: Annotated[int, typer.Option(
        help="play the split K times back to back, pass j under --shift with seed --seed + j (a stream's order and every "
             "frame's noise change); --limit applies per pass; intervals resample source frames")] = 1,
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples of the stream's frames for the 95% intervals")] = DEFAULT_RESAMPLES,
    bootstrap_seed: Annotated[int, typer.Option(help="seed of the bootstrap draws (the same draws serve every policy)")] = 0,
) -> None:
    """Device on every frame, cloud on the frames the policy uploads; mIoU with 95% intervals, the greedy oracle at the
    target count, gain captured, bytes, latency."""
    set_threads(threads)
    # every input is checked before the (slow) per-frame pass starts
    codec = parse_upload_codec(codec)
    if (codec == FEATURE_UPLOAD) != (feature_codec is not None):
        raise SpecError("--codec features and --feature-codec DIR go together (JD bitstreams need the codec that decodes them)")
    check_rate(rate)
    if bootstrap < 1:
        raise SpecError(f"--bootstrap must be >= 1 resample, got {bootstrap}")
    if not 0.0 <= dcam_alpha <= 1.0:
        raise SpecError(f"--dcam-alpha must be in [0, 1], got {dcam_alpha}")
    if controller not in ("window", "sa", "hindsight"):
        raise SpecError(f"unknown --controller {controller!r}; valid: window, sa, hindsight")
    if mess_ckpt is not None and sweep:
        raise SpecError("--mess-ckpt drives single runs (--policy P --rate R): a sweep replays the plain device's cached outputs")
    if controller == "hindsight" and not sweep:
        raise SpecError("--controller hindsight is not causal and exists for sweeps only (it cannot drive the device runtime)")
    rates = parse_rates(sweep) if sweep else None
    names = parse_list(policies, "--policies") if sweep else [policy]
    for name in names:
        if name not in POLICIES:
            raise SpecError(f"unknown policy {name!r}; valid: {', '.join(POLICIES)}")
    if not sweep and policy in C.U_POLICIES and uncertainty is None:
        raise SpecError(f"policy {policy!r} needs an uncertainty matrix: pass --uncertainty U.safetensors (from `tandemseg fit-uncertainty`)")
    check_fusion_args(fusion, fusion_ckpt)
    dataset, limit = open_stream(data, split, shift, seed, repeat_schedules, limit)
    dev = load_checkpoint(device_ckpt, expect_kind="device", expect_classes=dataset.classes)
    fuse = load_fuse_step(fusion, fusion_ckpt, dev.model, dataset.classes)
    cloud = load_checkpoint(cloud_ckpt, expect_kind="cloud", expect_classes=dataset.classes)
    um = UncertaintyMatrix.load(uncertainty, expect_classes=dataset.classes) if uncertainty else None
    variants = parse_variants(variant, dataset.classes)
    if dcam_alpha > 0 and um is not None and um.feature != "probs":
        raise SpecError(f"--dcam-alpha needs a U fitted on plain probabilities (DCAM's U_new is); {uncertainty} uses feature {um.feature!r}")
    send = send_device_probs or dcam_alpha > 0
    fcodec = load_codec(feature_codec, device=dev.model).codec if feature_codec else None
    identity = {"data": data, "split": split, "shift": shift, "seed": seed, "repeat_schedules": repeat_schedules,
                "device": K.checkpoint_identity(device_ckpt), "cloud": K.checkpoint_identity(cloud_ckpt)}
    if feature_codec:
        identity["feature_codec"] = K.checkpoint_identity(feature_codec)
    if fusion_ckpt is not None and fusion != "none":
        identity["fusion"] = {"mode": fusion, **K.checkpoint_identity(fusion_ckpt)}
    cache = load_cache(dataset, dev.model, cloud.model, codec, limit, send, cache_dir, identity, fcodec, fuse)
    budget = BudgetSpec(rate=rate, mode=controller, bytes_per_s=bytes_per_s, fps=fps)
    header = {"data": data, "split": split, "shift": shift, "repeat_schedules": repeat_schedules, "codec": codec,
              "device_ckpt": str(device_ckpt), "cloud_ckpt": str(cloud_ckpt),
              "uncertainty": str(uncertainty) if uncertainty else None, "u_meta": um.meta if um else None,
              "dcam_alpha": dcam_alpha, "controller": controller, "fusion": fusion,
              "fusion_ckpt": str(fusion_ckpt) if fusion_ckpt else None, **K.cache_info(cache)}
    if sweep:
        result = C.sweep_policies(cache, rates, names, um, variants, controller, seed, dcam_alpha, bootstrap, bootstrap_seed)
        payload = {**header, **result}
        print_sweep(payload)
        plot_path = plot or (json_path.with_suffix(".png") if json_path else None)
        if plot_path:
            from tandemseg.eval.plots import plot_sweep

            plot_sweep(payload, plot_path, title=f"{data} {split} ({shift})")
            console.print(f"[dim]wrote {plot_path}[/dim]")
        write_json(json_path, payload)
        return
    run = R.PolicyRun(policy, budget, um, seed, dcam_alpha)
    exit_model = load_exit_model(mess_ckpt) if mess_ckpt else None
    with progress() as bar:
        task = bar.add_task(f"runtime {policy}", total=cache.frames, info="")
        payload = {**header, **C.single_run(dataset, cache, run, dev.model, cloud.model, codec, limit, send, bootstrap, bootstrap_seed,
                                            on_frame=lambda: bar.advance(task), feature_codec=fcodec, exit_model=exit_model, fuse=fuse)}
    print_single(payload)
    write_json(json_path, payload)


def open_stream(data: str, split: str, shift: str, seed: int, repeats: int, limit: int | None) -> tuple[SegDataset, int | None]:
    """The evaluation stream and the frame limit to apply to it.

    repeats = 1: the split under `shift` (seed `seed`), first `limit` frames. repeats = K > 1: the split's first
    `limit` frames played K times, pass j under `shift` with seed `seed + j` (RepeatedSchedules); the limit is
    then already applied (None is returned for it).
    """
    if repeats < 1:
        raise SpecError(f"--repeat-schedules must be >= 1, got {repeats}")
    if repeats == 1:
        return open_dataset(data, split, shift, seed=seed), limit
    if parse_shift(shift) is None:
        raise SpecError("--repeat-schedules plays the split under K seeded shift schedules; under 'clean' every pass "
                        "would be the same frames (give --shift, e.g. stream:mixed/10)")
    passes = [open_dataset(data, split, shift, seed=seed + j) for j in range(repeats)]
    return RepeatedSchedules(passes, limit), None


def parse_variants(items: list[str], classes) -> dict[str, UncertaintyMatrix]:
    out = {}
    for item in items:
        name, eq, path = item.partition("=")
        if not eq or not name or not path:
            raise SpecError(f"--variant takes NAME=PATH (e.g. lam0.9=u-lam0.9.safetensors), got {item!r}")
        out[name] = UncertaintyMatrix.load(path, expect_classes=classes)
    return out


def check_fusion_args(fusion: str, fusion_ckpt: Path | None) -> None:
    """--fusion and --fusion-ckpt agree, before any slow work (the step itself is built by `load_fuse_step`)."""
    if fusion.strip().lower() not in FUSION_MODES:
        raise SpecError(f"unknown --fusion {fusion!r}; valid: {', '.join(FUSION_MODES)}")
    if (fusion.strip().lower() != "none") != (fusion_ckpt is not None):
        raise SpecError("--fusion refine|cfe needs --fusion-ckpt DIR (a CFE trained for this device), and --fusion-ckpt needs --fusion refine|cfe")


def load_fuse_step(fusion: str, fusion_ckpt: Path | None, device_model, classes) -> FuseStep:
    """The runtime's fuse step: CloudLabel for `none`, else the CFE of `fusion_ckpt` (refused for another device)."""
    ck = load_fusion(fusion_ckpt, device_model, expect_classes=classes) if fusion_ckpt is not None else None
    return make_fuse_step(fusion, ck.fusion if ck else None)


def load_cache(dataset, device_model, cloud_model, codec: str, limit, send: bool, cache_dir: Path | None, identity: dict,
               feature_codec=None, fuse: FuseStep | None = None) -> K.CollabCache:
    n = len(dataset) if limit is None else min(limit, len(dataset))
    with progress() as bar:
        task = bar.add_task("device + cloud per frame", total=n, info="")
        cache, path = K.load_or_build_cache(dataset, device_model, cloud_model, codec, limit, send, cache_dir, identity,
                                            on_frame=lambda: bar.advance(task), feature_codec=feature_codec, fuse=fuse)
    if path is not None:
        console.print(f"[dim]per-frame results from {path}[/dim]")
    return cache


def pct_ci(value: float | None, ci: list[float] | None, signed: bool = False) -> str:
    """'41.2 [39.8, 42.6]': a fraction as a percentage with its interval ('-' when undefined)."""
    if value is None:
        return "-"
    fmt = "+.1f" if signed else ".1f"

    def show(x: float) -> str:
        return f"{round(100 * x, 1) + 0.0:{fmt}}"  # + 0.0: rounding noise of an exact zero prints as 0.0, not -0.0

    return show(value) if ci is None else f"{show(value)} [{show(ci[0])}, {show(ci[1])}]"


def print_sweep(payload: dict) -> None:
    b = payload["bootstrap"]
    out.print(f"device {pct_ci(payload['device_miou'], payload['device_miou_ci'])}  cloud {pct_ci(payload['cloud_miou'], payload['cloud_miou_ci'])} "
              f"mIoU % ({payload['shift']}, {b['frames']} frames from {b['source_frames']} source frames); "
              f"[{100 * b['level']:.0f}% bootstrap intervals, {b['resamples']} paired resamples of source frames]")
    baseline = next((x for x in C.DIFF_BASELINES if any(x in r.get("vs", {}) for r in payload["rows"])), None)
    table = Table(title="collab mIoU at each target rate; oracle = greedy search at round(target x frames) uploads")
    cols = ["policy", "target %", "achieved %", "collab mIoU %", *([f"minus {baseline}"] if baseline else []), "oracle %",
            "gain captured %", "B up/frame"]
    for col in cols:
        table.add_column(col, justify="right")
    for r in payload["rows"]:
        vs = r.get("vs", {}).get(baseline) if baseline else None
        cells = [r["policy"], f"{100 * r['target_rate']:.1f}", f"{100 * r['upload_rate']:.1f}", pct_ci(r["collab_miou"], r["collab_miou_ci"])]
        if baseline:
            cells.append(pct_ci(vs["collab_miou_delta"], vs["ci"], signed=True) if vs else "-")
        cells += [pct_ci(r["oracle_miou"], None), pct_ci(r["gain_captured"], r["gain_captured_ci"]), f"{r['bytes_up_per_frame']:.0f}"]
        table.add_row(*cells)
    out.print(table)
    auc = payload["auc"]["policies"]
    if auc:
        lo, hi = payload["auc"]["span"]
        table = Table(title=f"mean collab mIoU over target rates {100 * lo:.0f}-{100 * hi:.0f}% (trapezoid area / rate extent)")
        for col in ("policy", "rates %", "AUC mIoU %", *(f"minus {x}" for x in C.DIFF_BASELINES)):
            table.add_column(col, justify="right")
        for name, a in auc.items():
            diffs = [pct_ci(a["vs"][x]["auc_delta"], a["vs"][x]["ci"], signed=True) if x in a["vs"] else "-" for x in C.DIFF_BASELINES]
            table.add_row(name, ",".join(f"{100 * r:g}" for r in a["rates"]), pct_ci(a["auc"], a["auc_ci"]), *diffs)
        out.print(table)


def print_single(p: dict) -> None:
    table = Table(title=f"{p['policy']} at target {100 * p['target_rate']:.1f}% ({p['shift']}); "
                        f"{100 * p['bootstrap']['level']:.0f}% bootstrap intervals over {p['bootstrap']['source_frames']} source frames")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("device_miou", "cloud_miou", "collab_miou", "gain_over_device", "gain_captured"):
        if key in p:  # a MESS run reports no gain against the plain device
            table.add_row(key + " %", pct_ci(p[key], p.get(f"{key}_ci"), signed=key.startswith("gain_over")))
    if "oracle_miou" in p:
        table.add_row("oracle_miou % (greedy, target count)", pct_ci(p["oracle_miou"], p.get("oracle_miou_ci")))
    if p.get("mess"):
        table.add_row("MESS exits taken", str(p["exit_histogram"]))
        table.add_row("device GFLOPs per frame (MESS)", f"{p['device_gflops_per_frame']:.4g}")
    table.add_row("upload rate % (achieved / target)", f"{100 * p['upload_rate']:.1f} / {100 * p['target_rate']:.1f}")
    for key in ("bytes_up_per_frame", "device_ms", "score_ms", "cloud_ms", "device_gflops", "cloud_gflops"):
        v = p.get(key)
        table.add_row(key, "-" if v is None else f"{v:.4g}")
    out.print(table)
