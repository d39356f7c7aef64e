"""`tandemseg fusion train`: ACDC's CFE (refinement + fusion) on frozen device and cloud checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import typer
from rich.table import Table

from tandemseg.cli.common import console, progress, write_json
from tandemseg.cli.models import recipe_command
from tandemseg.data.spec import open_dataset
from tandemseg.errors import SpecError
from tandemseg.eval import cache as K
from tandemseg.eval.bootstrap import DEFAULT_RESAMPLES
from tandemseg.eval.fusion import BASE
from tandemseg.eval.metrics import miou_of
from tandemseg.fusion.checkpoint import save_fusion
from tandemseg.fusion.config import REFINERS, FusionConfig
from tandemseg.fusion.engine import CollaborativeFusion
from tandemseg.models.checkpoint import load_checkpoint
from tandemseg.train.fusion import (
    FusionSet,
    FusionTrainConfig,
    fusion_confusions,
    load_or_collect,
    train_fusion,
)

app = typer.Typer(no_args_is_help=True, add_completion=False, help="ACDC's Collaborative Fusion Engine: train it on frozen models.")


def _collect(dataset, dev, cloud, limit, cache_dir, identity, what: str) -> FusionSet:
    n = len(dataset) if limit is None else min(limit, len(dataset))
    with progress() as bar:
        task = bar.add_task(f"device + cloud outputs ({what})", total=n, info="")
        return load_or_collect(dataset, dev, cloud, limit, cache_dir, identity, on_frame=lambda: bar.advance(task))


@app.command("train")
def train(
    device_ckpt: Path = typer.Option(..., help="device checkpoint whose coarse maps CFE refines (frozen; the CFE is bound to it)"),
    cloud_ckpt: Path = typer.Option(..., help="cloud checkpoint whose probabilities CFE fuses (frozen)"),
    data: str = typer.Option("synthetic", help="dataset spec: synthetic | camvid:PATH | ..."),
    out_dir: Path = typer.Option(..., "--out", help="CFE checkpoint folder (weights.safetensors, card.json, history.json)"),
    refiner: str = typer.Option("sparse", help=f"M_u's form: {' | '.join(REFINERS)}"),
    hidden: int = typer.Option(32, min=1, help="channels of the refiner's layers and of the fusion convolutions"),
    layers: int = typer.Option(2, min=1, help="refiner layers (sparse / point)"),
    top_percent: float = typer.Option(10.0, help="eq. 12 mask: the most uncertain top_percent %% of the working grid"),
    work_scale: float = typer.Option(0.5, help="refine and fuse at this fraction of the frame's resolution"),
    epochs: int = typer.Option(8, min=1, help="epochs over the cached training outputs"),
    batch_size: int = typer.Option(4, min=1),
    lr: float = typer.Option(2e-3, help="Adam learning rate (cosine decay)"),
    train_limit: int = typer.Option(None, help="first N training frames only"),
    val_limit: int = typer.Option(None, help="first N val frames only (the card's figures; nothing is selected on them)"),
    seed: int = typer.Option(0),
    cache_dir: Path = typer.Option(Path("runs/fusion-cache"), help="keep the collected device/cloud outputs here"),
    threads: int = typer.Option(1, help="torch CPU threads"),
    json_path: Path = typer.Option(None, "--json", help="write the figures here too"),
) -> None:
    """Collect the device's and cloud's outputs on the train split once (through the runtime, the cloud's
    probabilities as a reply carries them), train CFE on them, report val mIoU of device / refined / cloud / fused."""
    torch.set_num_threads(threads)
    try:
        cfg = FusionConfig(refiner=refiner, hidden=hidden, layers=layers, top_percent=top_percent, work_scale=work_scale)
    except SpecError as e:
        raise typer.BadParameter(str(e)) from None
    dev = load_checkpoint(device_ckpt, expect_kind="device")
    cloud = load_checkpoint(cloud_ckpt, expect_kind="cloud")
    train_set, val_set = open_dataset(data, "train"), open_dataset(data, "val")
    classes = train_set.classes
    cfg.num_classes = classes.num_classes
    if dev.model.cfg.num_classes != classes.num_classes or cloud.model.cfg.num_classes != classes.num_classes:
        raise SpecError(f"{data} has {classes.num_classes} classes but the checkpoints predict "
                        f"{dev.model.cfg.num_classes} (device) / {cloud.model.cfg.num_classes} (cloud)")
    identity = {"data": data, "device": K.checkpoint_identity(device_ckpt), "cloud": K.checkpoint_identity(cloud_ckpt)}
    train_data = _collect(train_set, dev.model, cloud.model, train_limit, cache_dir, {**identity, "split": "train"}, "train")
    val_data = _collect(val_set, dev.model, cloud.model, val_limit, cache_dir, {**identity, "split": "val"}, "val")
    tcfg = FusionTrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    torch.manual_seed(seed)
    fusion = CollaborativeFusion(cfg)
    steps = epochs * -(-len(train_data) // batch_size)
    with progress() as bar:
        task = bar.add_task(f"CFE ({refiner})", total=steps, info="")
        history = train_fusion(fusion, train_data, tcfg, classes.ignore_index, on_step=lambda: bar.advance(task),
                               on_epoch=lambda r: console.print(f"epoch {r['epoch']}: loss refined {r['loss_local']:.4f}, "
                                                                f"fused {r['loss_fused']:.4f} ({r['seconds']:.0f} s)"))
    cms = fusion_confusions(fusion, val_data, classes.num_classes, classes.ignore_index)
    val = {key: miou_of(cm.sum(0)) for key, cm in cms.items()} | {"frames": len(val_data)}
    metrics = {"val": val, "reply_prob_bytes_mean": float(val_data.reply_prob_bytes.mean()), "train_history": history}
    h, w = train_data.images.shape[1:3]
    save_fusion(out_dir, fusion, classes, dev.model, data=data, recipe=recipe_command(), frame_hw=(h, w), metrics=metrics,
                extra={"train_config": tcfg.to_json(), "device_ckpt": str(device_ckpt), "cloud_ckpt": str(cloud_ckpt)})
    (out_dir / "history.json").write_text(json.dumps(history, indent=1))
    table = Table(title=f"val mIoU ({len(val_data)} frames), CFE {refiner}")
    for col in ("device", "refined", "cloud", "fused"):
        table.add_column(col, justify="right")
    table.add_row(*(f"{100 * val[k]:.2f}" for k in ("device", "refined", "cloud", "fused")))
    console.print(table)
    console.print(f"[dim]wrote {out_dir}[/dim]")
    write_json(json_path, {"config": cfg.to_json(), **metrics})


def parse_fusion_variant(text: str) -> tuple[str, str, Path]:
    """NAME=MODE:DIR, e.g. cfe=cfe:checkpoints/camvid-fusion or sparse=refine:runs/fusion/sparse."""
    name, eq, rest = text.partition("=")
    mode, colon, folder = rest.partition(":")
    if not (eq and colon and name and folder) or mode not in ("refine", "cfe"):
        raise SpecError(f"--variant takes NAME=MODE:DIR with MODE refine or cfe (e.g. cfe=cfe:checkpoints/camvid-fusion), got {text!r}")
    if name == BASE:
        raise SpecError(f"--variant name {BASE!r} is the variant without CFE; choose another name")
    return name, mode, Path(folder)


@app.command("eval")
def evaluate(
    device_ckpt: Path = typer.Option(..., help="device checkpoint (the CFE checkpoints must be trained for it)"),
    cloud_ckpt: Path = typer.Option(..., help="cloud checkpoint"),
    variant: list[str] = typer.Option(..., help="NAME=MODE:DIR (repeatable): a CFE checkpoint in mode refine or cfe"),
    data: str = typer.Option("synthetic", help="dataset spec"),
    split: str = typer.Option("val", help="split to evaluate"),
    shift: str = typer.Option("clean", help="clean | NAME:SEVERITY | dusk | stream:SPEC"),
    repeat_schedules: int = typer.Option(1, min=1, help="play the split K times under K seeded shift schedules"),
    uncertainty: Path = typer.Option(None, help="U file (the acdc policy needs it)"),
    policies: str = typer.Option("acdc,entropy", help="upload policies, comma-separated"),
    rates: str = typer.Option("0.05,0.1,0.2", help="target upload rates, comma-separated"),
    limit: int = typer.Option(None, help="first N frames only"),
    seed: int = typer.Option(0),
    bootstrap: int = typer.Option(DEFAULT_RESAMPLES, min=1, help="bootstrap resamples for the 95% intervals"),
    cache_dir: Path = typer.Option(None, help="keep per-frame results of every variant here"),
    threads: int = typer.Option(1, help="torch CPU threads (latencies are reported at this setting)"),
    json_path: Path = typer.Option(None, "--json", help="write the results here"),
    markdown: Path = typer.Option(None, help="write the Markdown tables here"),
) -> None:
    """ACDC Table 5 analogue: base ("cloud or device") and each CFE variant at the same uploads, mIoU and boundary F."""
    from tandemseg.cli.offload import load_cache, load_fuse_step, open_stream, parse_list, parse_rates
    from tandemseg.device.policies import POLICIES
    from tandemseg.device.uncertainty import UncertaintyMatrix
    from tandemseg.eval.fusion import Variant, fusion_table, upload_masks

    torch.set_num_threads(threads)
    parsed = [parse_fusion_variant(v) for v in variant]
    names = parse_list(policies, "--policies")
    for name in names:
        if name not in POLICIES:
            raise SpecError(f"unknown policy {name!r}; valid: {', '.join(POLICIES)}")
    rate_list = parse_rates(rates)
    dataset, limit = open_stream(data, split, shift, seed, repeat_schedules, limit)
    dev = load_checkpoint(device_ckpt, expect_kind="device", expect_classes=dataset.classes)
    cloud = load_checkpoint(cloud_ckpt, expect_kind="cloud", expect_classes=dataset.classes)
    fuse_steps = {name: load_fuse_step(mode, folder, dev.model, dataset.classes) for name, mode, folder in parsed}
    um = UncertaintyMatrix.load(uncertainty, expect_classes=dataset.classes) if uncertainty else None
    if um is None and any(n.startswith("acdc") for n in names):
        raise SpecError("policy acdc needs --uncertainty U.safetensors (from `tandemseg fit-uncertainty`)")
    identity = {"data": data, "split": split, "shift": shift, "seed": seed, "repeat_schedules": repeat_schedules,
                "device": K.checkpoint_identity(device_ckpt), "cloud": K.checkpoint_identity(cloud_ckpt)}
    variants = [Variant(BASE, "none", load_cache(dataset, dev.model, cloud.model, "png", limit, False, cache_dir, identity))]
    for name, mode, folder in parsed:
        ident = {**identity, "fusion": {"mode": mode, **K.checkpoint_identity(folder)}}
        variants.append(Variant(name, mode, load_cache(dataset, dev.model, cloud.model, "png", limit, False, cache_dir, ident, fuse=fuse_steps[name])))
    masks = upload_masks(variants[0].cache, names, rate_list, um, seed)
    result = {"data": data, "split": split, "shift": shift, "repeat_schedules": repeat_schedules, "device_ckpt": str(device_ckpt),
              "cloud_ckpt": str(cloud_ckpt), "uncertainty": str(uncertainty) if uncertainty else None,
              "variants": {n: {"mode": m, "ckpt": str(f)} for n, m, f in parsed}, **fusion_table(variants, masks, bootstrap, seed)}
    text = fusion_markdown(result)
    console.print(text, markup=False, highlight=False)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(text)
    write_json(json_path, result)


def _pp(value: float | None, ci: list[float] | None = None, signed: bool = False) -> str:
    """A fraction as a percentage with its interval: '62.48 [61.5, 63.4]', or signed '+2.14 [+1.93, +2.33]'."""
    if value is None:
        return "-"
    spec, ci_spec = ("+.2f", "+.2f") if signed else (".2f", ".1f")
    body = format(100 * value, spec)
    return body if ci is None else f"{body} [{format(100 * ci[0], ci_spec)}, {format(100 * ci[1], ci_spec)}]"


def fusion_markdown(result: dict) -> str:
    """mIoU (and its paired difference to base) per variant and setting; boundary F; costs."""
    settings = list(dict.fromkeys((r["policy"], r["target_rate"]) for r in result["rows"]))
    variants = list(dict.fromkeys(r["variant"] for r in result["rows"]))
    by = {(r["variant"], r["policy"], r["target_rate"]): r for r in result["rows"]}
    head = "| variant | " + " | ".join("device only" if p == "device only" else f"{p} {100 * t:g}%" for p, t in settings) + " |"
    sep = "|---|" + "---:|" * len(settings)
    lines = [f"{result['data']} {result['split']} ({result['shift']}), {result['frames']} frames; mIoU % [95% CI]", "", head, sep]
    for v in variants:
        lines.append(f"| {v} | " + " | ".join(_pp(by[v, p, t]["miou"], by[v, p, t]["miou_ci"]) for p, t in settings) + " |")
    lines += ["", "Difference to base at the same uploads, pp [paired 95% CI]", "", head, sep]
    for v in variants[1:]:
        lines.append(f"| {v} | " + " | ".join(_pp(by[v, p, t]["delta_vs_base"], by[v, p, t]["delta_vs_base_ci"], True) for p, t in settings) + " |")
    lines += ["", "Boundary F-score (3 px), % [95% CI]", "", head, sep]
    for v in variants:
        lines.append(f"| {v} | " + " | ".join(_pp(by[v, p, t]["boundary_f"], by[v, p, t]["boundary_f_ci"]) for p, t in settings) + " |")
    lines += ["", "| variant | device ms (median) | CFE ms, frame not answered | CFE ms, answered frame | reply bytes / upload |", "|---|---:|---:|---:|---:|"]
    for v in variants:
        c = result["costs"][v]
        lines.append(f"| {v} | {c['device_ms_median']:.1f} | {c['fuse_local_ms_median']:.2f} | {c['fuse_answered_ms_median']:.2f} | {c['bytes_down_mean']:.0f} |")
    return "\n".join(lines) + "\n"


@app.command("figure")
def figure(
    device_ckpt: Path = typer.Option(..., help="device checkpoint"),
    cloud_ckpt: Path = typer.Option(..., help="cloud checkpoint"),
    fusion_ckpt: Path = typer.Option(..., help="CFE checkpoint trained for --device-ckpt"),
    data: str = typer.Option("synthetic", help="dataset spec"),
    split: str = typer.Option("val"),
    frames: str = typer.Option("0,25,50,75", help="frame indices, comma-separated (fixed in advance, not picked by result)"),
    out_path: Path = typer.Option(..., "--out", help="PNG to write"),
    threads: int = typer.Option(1),
) -> None:
    """ACDC Fig. 4 analogue: input, device only, refined, cloud (collab without CFE), fused (with CFE), ground truth."""
    from tandemseg.cli.offload import load_fuse_step
    from tandemseg.eval.fusion_figure import draw_fusion_figure, figure_rows

    torch.set_num_threads(threads)
    try:
        indices = [int(v) for v in frames.split(",") if v.strip()]
    except ValueError:
        raise SpecError(f"--frames takes comma-separated frame indices, got {frames!r}") from None
    dataset = open_dataset(data, split)
    bad = [i for i in indices if not 0 <= i < len(dataset)]
    if not indices or bad:
        raise SpecError(f"--frames must name frames 0..{len(dataset) - 1} of {data} {split}; out of range: {bad}")
    dev = load_checkpoint(device_ckpt, expect_kind="device", expect_classes=dataset.classes)
    cloud = load_checkpoint(cloud_ckpt, expect_kind="cloud", expect_classes=dataset.classes)
    step = load_fuse_step("cfe", fusion_ckpt, dev.model, dataset.classes)
    rows = figure_rows(dataset, indices, dev.model, cloud.model, step)
    draw_fusion_figure(rows, dataset, out_path, f"{data} {split}: CFE ({fusion_ckpt.name}); per-frame mIoU and boundary F (3 px)")
    console.print(f"wrote {out_path}")
