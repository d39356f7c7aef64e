"""`tandemseg bench models|data` and `tandemseg export-onnx`: what the models and the data pipeline cost on CPU.

Heavy imports (torch models, onnxruntime, the synthetic generator) happen inside the commands so
`tandemseg --help` stays fast.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from tandemseg.cli.common import console, out, write_json
from tandemseg.data.tensors import to_tensor
from tandemseg.errors import TandemsegError
from tandemseg.exits.checkpoint import load_mess
from tandemseg.exits.costs import gflops_table
from tandemseg.exits.export import exit_latencies
from tandemseg.exits.network import FINAL
from tandemseg.models.registry import MODEL_KINDS

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Benchmark models (params, FLOPs, latency, memory) and the data pipeline.")

DEFAULT_CKPT_ROOT = Path("checkpoints")
PARITY_FRAMES = 2  # frames the bench compares PyTorch and ONNX on: a sanity check, export-onnx does more


def checkpoint_kind(folder: Path) -> str:
    """The `kind` of a checkpoint card ('device', 'cloud', 'fusion', 'codec', ...); CheckpointError when unreadable."""
    from tandemseg.errors import CheckpointError
    from tandemseg.models.checkpoint import read_json_card

    return str(read_json_card(folder / "card.json", CheckpointError, ("kind",), "pass a checkpoint folder").get("kind"))


def bench_fusion(folder: Path, input_hw: tuple[int, int], threads: list[int], warmup: int, runs: int) -> list[dict]:
    """CFE's cost on top of the device model step it was trained for (the card names the device checkpoint)."""
    from tandemseg.device.steps import FusionStep
    from tandemseg.eval.profile import profile_fusion
    from tandemseg.fusion.checkpoint import load_fusion, read_fusion_card
    from tandemseg.models.checkpoint import load_checkpoint

    card = read_fusion_card(folder)
    device_folder = Path(card.get("device_ckpt") or "")
    if not (device_folder / "card.json").is_file():
        raise TandemsegError(f"{folder}: its card names device checkpoint {device_folder}, which is not here; bench it next to that checkpoint")
    device = load_checkpoint(device_folder, expect_kind="device").model
    ck = load_fusion(folder, device)
    step = FusionStep(ck.fusion, "cfe")
    common = {"model": folder.name, "path": str(folder), "kind": "fusion", "device": str(device_folder), "input_hw": list(input_hw),
              "config": ck.fusion.cfg.to_json(), "parameters": sum(p.numel() for p in ck.fusion.parameters())}
    return [{**common, "threads": t, **profile_fusion(step, device, input_hw, t, warmup, runs)} for t in threads]


def fusion_table(rows: list[dict]) -> Table:
    table = Table(title="CFE on top of the device model step (median ms)", box=None, pad_edge=False, header_style="bold underline")
    for name in ("CFE", "thr", "refiner", "device step", "+ refine", "overhead", "+ refine + fuse"):
        table.add_column(name, justify="left" if name in ("CFE", "refiner") else "right", no_wrap=True)
    for r in rows:
        c = r["config"]
        table.add_row(r["model"], str(r["threads"]), f"{c['refiner']} x{c['layers']} @{c['top_percent']:g}%", f"{r['device_step_ms']:.1f}",
                      f"{r['cfe_local_ms']:.2f}", f"{100 * r['cfe_local_overhead']:.1f}%", f"{r['cfe_answered_ms']:.2f}")
    return table


def find_checkpoints(root: Path = DEFAULT_CKPT_ROOT) -> list[Path]:
    """Every checkpoint folder under `root` (a folder with a card.json), sorted by name."""
    return sorted(p.parent for p in root.glob("*/card.json"))


def machine_info() -> dict:
    """What the timings were taken on: they mean little without it."""
    import onnxruntime
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cpus_visible": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def bench_checkpoint(
    folder: Path, input_hw: tuple[int, int], threads: list[int], warmup: int, runs: int, memory: bool, onnx: bool,
) -> list[dict]:
    """Profile one checkpoint at each thread count; device models are also exported to ONNX and timed in ONNX Runtime."""
    import torch

    from tandemseg.eval.profile import profile_model
    from tandemseg.models.checkpoint import load_checkpoint
    from tandemseg.models.onnx_export import device_input_hw, export_onnx, onnx_latency, onnx_parity

    ck = load_checkpoint(folder)
    scale = float(ck.model.cfg.input_scale)
    common: dict[str, Any] = {
        "model": folder.name,
        "path": str(folder),
        "kind": ck.kind,
        "input_hw": list(input_hw),
        "input_scale": scale,
        "compute_hw": list(device_input_hw(input_hw, scale)),  # what the encoder actually sees
        "val_miou": (ck.card.get("metrics", {}).get("val") or {}).get("miou"),
        "data": ck.card.get("data"),
    }
    rows = [{**common, **profile_model(ck.model, (1, 3, *input_hw), threads=t, warmup=warmup, runs=runs, memory=memory),
             "onnx_latency_ms_median": None} for t in threads]
    if onnx and ck.kind == "device":
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(ck.model, Path(tmp) / "model.onnx", input_hw=input_hw)
            torch.manual_seed(0)
            parity = onnx_parity(ck.model, path, torch.rand(PARITY_FRAMES, 3, *input_hw), threads=threads[0])
            for row in rows:
                row["onnx_max_abs_diff"] = parity["max_abs_diff"]
                row["onnx_argmax_agreement"] = parity["argmax_agreement"]
                row["onnx_latency_ms_median"] = onnx_latency(path, input_hw, threads=row["threads"], warmup=warmup, runs=runs)
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def models_table(rows: list[dict], input_hw: tuple[int, int]) -> Table:
    """Compact enough for 80 columns; p90 latency, kind and parity are in the JSON and Markdown."""
    table = Table(title=f"Model cost on CPU: {input_hw[0]}x{input_hw[1]} frame, batch 1", box=None, pad_edge=False, header_style="bold underline")
    for name in ("model", "thr", "params", "runs at", "GFLOPs", "torch ms", "ORT ms", "mem MB", "mIoU"):
        table.add_column(name, justify="left" if name in ("model", "runs at") else "right", no_wrap=True)
    for r in rows:
        table.add_row(
            r["model"], str(r["threads"]), f"{r['parameters'] / 1e6:.2f}M", "x".join(map(str, r["compute_hw"])), f"{r['gflops']:.2f}",
            f"{r['latency_ms_median']:.1f}", _fmt(r.get("onnx_latency_ms_median"), ".1f"), _fmt(r.get("peak_memory_mb"), ".0f"),
            _fmt(r.get("val_miou"), ".4f"),
        )
    table.caption = "thr: threads; runs at: the size the model computes at; ms: median (PyTorch eager / ONNX Runtime, device only); mIoU: val, from the card"
    return table


def _sizes(row: dict) -> str:
    """'360x480 -> 180x240' for a model that downsamples, '360x480' otherwise."""
    hw, chw = "x".join(map(str, row["input_hw"])), "x".join(map(str, row["compute_hw"]))
    return hw if hw == chw else f"{hw} -> {chw}"


def command_line() -> str:
    """The command as typed, for the record in JSON and Markdown."""
    return "tandemseg " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def models_markdown(payload: dict) -> str:
    """docs/results/models.md: the table, the command that made it, the machine, and how to read the numbers."""
    m = payload["machine"]
    lines = [
        "# Model cost on CPU",
        "",
        "Generated by:",
        "",
        "```bash",
        (f"nice -n {payload['niceness']} " if payload.get("niceness") else "") + payload["command"],
        "```",
        "",
        f"Machine: {m['cpus_visible']} CPUs visible ({m['cpu']}, {m['platform']}), Python {m['python']}, torch {m['torch']}, "
        f"ONNX Runtime {m['onnxruntime']}; 1-minute load average {_fmt(payload.get('load_avg_1min_start'), '.1f')} when the run "
        f"started, {_fmt(m['load_avg_1min'], '.1f')} when it ended. "
        f"Batch 1, {payload['warmup']} warm-up passes, {payload['runs']} timed passes.",
    ]
    if payload["models"]:
        lines += ["", "| model | kind | threads | params (M) | input -> computed at | GFLOPs | PyTorch ms (median / p90) | "
                  "ONNX Runtime ms (median) | peak memory (MB) | val mIoU (card) |", "|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in payload["models"]:
        lines.append(
            f"| {r['model']} | {r['kind']} | {r['threads']} | {r['parameters'] / 1e6:.2f} | {_sizes(r)} | {r['gflops']:.2f} | "
            f"{r['latency_ms_median']:.1f} / {r['latency_ms_p90']:.1f} | {_fmt(r.get('onnx_latency_ms_median'), '.1f')} | "
            f"{_fmt(r.get('peak_memory_mb'), '.0f')} | {_fmt(r.get('val_miou'), '.4f')} |"
        )
    if payload.get("fusion"):
        lines += ["", "## CFE (ACDC sec. 3.2.3) on top of the device model step", "",
                  "The device model step is the runtime's (`run_device`: network, upsampling, label map). `+ refine` is the fuse",
                  "step of a frame the cloud did not answer (the refined map), `+ refine + fuse` of an answered one (the reply's",
                  "4-bit probabilities unpacked and fused). Interleaved runs on one random noise frame; about the mask's share of the",
                  "sites is refined (eq. 12's tau is a per-frame quantile). Compare overheads within a row: the machine's speed drifts.", "",
                  "| CFE | threads | refiner | params | device step ms | + refine ms | overhead | + refine + fuse ms |",
                  "|---|---:|---|---:|---:|---:|---:|---:|"]
        for r in payload["fusion"]:
            c = r["config"]
            lines.append(f"| {r['model']} | {r['threads']} | {c['refiner']} x{c['layers']} at {c['top_percent']:g}% | {r['parameters']} | "
                         f"{r['device_step_ms']:.1f} | {r['cfe_local_ms']:.2f} | {100 * r['cfe_local_overhead']:.1f}% | {r['cfe_answered_ms']:.2f} |")
    parity = {r["model"]: f"{r['model']} max |logit diff| {r['onnx_max_abs_diff']:.1e}, argmax agreement {100 * r['onnx_argmax_agreement']:.2f}%"
              for r in payload["models"] if r.get("onnx_max_abs_diff") is not None}
    if parity:
        lines += ["", f"ONNX Runtime vs PyTorch on {PARITY_FRAMES} random frames: " + "; ".join(parity.values()) + "."]
    lines += ["", *MODELS_NOTES]
    return "\n".join(lines) + "\n"


MODELS_NOTES = [
    "How to read it (definitions in `src/tandemseg/eval/profile.py`):",
    "",
    "- **input -> computed at**: every model gets the same full-resolution frame. The device downsamples it by its",
    "  `input_scale` inside `forward` (ACDC eq. 4) and computes at the reduced size; its logits are upsampled back.",
    "- **GFLOPs**: `torch.utils.flop_counter.FlopCounterMode`, one multiply-add = 2 FLOPs. Convolutions and matrix",
    "  products only: element-wise ops, pooling and resampling (including the device's antialiased downsample) are",
    "  not counted.",
    "- **PyTorch ms**: `time.perf_counter` around one forward pass under `torch.inference_mode`, after warm-up, with",
    "  `torch.set_num_threads(threads)`.",
    "- **ONNX Runtime ms**: the device model exported by `tandemseg export-onnx` (the same graph: frame in [0,1] ->",
    "  full-res logits; the antialiased downsample is exported exactly, as precomputed separable weights), CPU",
    "  provider, `intra_op_num_threads = threads`. Only device models are exported here.",
    "- **peak memory**: the rise of the resident set size while a fresh child process runs inference, above its RSS",
    "  just before (high-water mark reset via `/proc/self/clear_refs`, read back as `VmHWM`): activations, oneDNN",
    "  scratch and allocator slack, not the weights or the interpreter.",
    "- **val mIoU** is copied from the checkpoint's card (best epoch on the val split), not measured by this command.",
    "- Latency depends on what else runs on the machine: the JSON beside this file records the load average. Rows",
    "  with the same architecture (same parameters and GFLOPs, e.g. a CamVid and a synthetic checkpoint) must time",
    "  the same, so their spread shows the noise of the run. On a shared machine, compare rows of one run only.",
    "- **threads**: with 2 threads on a 2-core machine that also runs other jobs, every op waits for its slower",
    "  thread (OpenMP / ONNX Runtime thread pools synchronise per op), so a busy second core can make 2 threads much",
    "  slower than 1. Where both counts are listed, the 1-thread rows are the stable comparison between models.",
]


@app.command()
def models(
    ckpt: Annotated[list[Path] | None, typer.Option("--ckpt", help="Checkpoint folder; repeat for several (default: every checkpoints/*/card.json).")] = None,
    threads: Annotated[list[int] | None, typer.Option("--threads", help="CPU threads for PyTorch and ONNX Runtime; repeat to compare (default: 2).")] = None,
    height: Annotated[int, typer.Option("--height", min=32, help="Frame height fed to every model (full resolution).")] = 360,
    width: Annotated[int, typer.Option("--width", min=32, help="Frame width fed to every model (full resolution).")] = 480,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed passes before timing.")] = 3,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Timed passes; the median and p90 are reported.")] = 20,
    memory: Annotated[bool, typer.Option("--memory/--no-memory", help="Measure peak memory in a child process.")] = True,
    onnx: Annotated[bool, typer.Option("--onnx/--no-onnx", help="Export device models to ONNX and time them in ONNX Runtime.")] = True,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON here.")] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Also write the table, the command and the machine as Markdown here.")] = None,
) -> None:
    """Parameters, GFLOPs, CPU latency (PyTorch; ONNX Runtime for device models) and peak memory per checkpoint.

    Every model gets the same full-resolution frame; the device downsamples it inside its forward, so its numbers are those of its real job (its FLOPs are counted at the reduced size it computes at; resampling is not counted).
    """
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    folders = list(ckpt) if ckpt else find_checkpoints()
    if not folders:
        raise TandemsegError(
            f"no checkpoints found under {DEFAULT_CKPT_ROOT}/ (folders with card.json); pass --ckpt DIR, "
            "or train one first: tandemseg train --model device --data synthetic --out checkpoints/synthetic-device"
        )
    threads = threads or [2]
    if min(threads) < 1:
        raise TandemsegError(f"--threads must be >= 1, got {min(threads)}")
    rows: list[dict] = []
    fusion_rows: list[dict] = []
    for folder in folders:
        kind = checkpoint_kind(Path(folder))
        if kind == "fusion":
            with console.status(f"profiling CFE {folder}"):
                fusion_rows += bench_fusion(Path(folder), (height, width), threads, warmup, runs)
            continue
        if kind not in MODEL_KINDS:
            console.print(f"[dim]{folder}: a {kind} checkpoint, not a model (bench codec / bench exits time those)[/dim]")
            continue
        with console.status(f"profiling {folder}"):
            rows += bench_checkpoint(Path(folder), (height, width), threads, warmup, runs, memory, onnx)
        console.print(f"[dim]{folder}: " + ", ".join(f"{r['latency_ms_median']:.1f} ms ({r['threads']} thr)" for r in rows[-len(threads):]) + "[/dim]")
    rows.sort(key=lambda r: r["threads"])  # stable: one block per thread count, checkpoints in folder order
    if rows:
        out.print(models_table(rows, (height, width)))
    if fusion_rows:
        out.print(fusion_table(fusion_rows))
    payload = {"command": command_line(), "niceness": os.nice(0), "load_avg_1min_start": load_start, "threads": threads, "input_hw": [height, width], "warmup": warmup, "runs": runs,
               "machine": machine_info(), "models": rows, "fusion": fusion_rows}
    write_json(json_path, payload)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(models_markdown(payload))
        console.print(f"[dim]wrote {markdown}[/dim]")


def data_table(generator: dict, shifts: dict[str, float], families: dict[str, tuple[str, ...]], severity: int) -> Table:
    """One row for the generator, one per shift (grouped by family), in ms per frame and frames per second."""
    size = "x".join(map(str, generator.get("size", ["?"])))
    table = Table(title=f"Data pipeline cost on CPU ({size} frames, median ms per frame)")
    table.add_column("what", no_wrap=True)
    table.add_column("family")
    table.add_column("ms / frame", justify="right")
    table.add_column("frames / s", justify="right")
    table.add_row("synthetic generator", "-", f"{generator['ms_per_frame']:.1f}", f"{1000.0 / generator['ms_per_frame']:.1f}")
    family = {name: fam for fam, names in families.items() for name in names}
    for name, ms in shifts.items():
        label = name if family.get(name) == "lighting" else f"{name}:{severity}"
        table.add_row(label, family.get(name, "-"), f"{ms:.1f}", f"{1000.0 / ms:.1f}" if ms > 0 else "-")
    return table


@app.command()
def data(
    frames: Annotated[int, typer.Option("--frames", min=1, help="Synthetic frames to time.")] = 50,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed applications of each shift (median reported).")] = 5,
    severity: Annotated[int, typer.Option("--severity", min=1, max=5, help="Severity of the corruptions timed.")] = 3,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON here.")] = None,
) -> None:
    """Time the synthetic scene generator and every shift (median ms per 360x480 frame)."""
    from tandemseg.data.shifts import SHIFT_FAMILIES, benchmark_shifts
    from tandemseg.data.synthetic import benchmark_generator

    with console.status(f"timing the synthetic generator ({frames} frames)"):
        generator = benchmark_generator(n=frames)
    with console.status(f"timing every shift ({repeats} repeats each)"):
        shifts = benchmark_shifts(repeats=repeats, severity=severity)
    out.print(data_table(generator, shifts, SHIFT_FAMILIES, severity))
    write_json(json_path, {"command": command_line(), "generator": generator, "shifts_ms_per_frame": shifts,
                           "shift_severity": severity, "shift_repeats": repeats, "machine": machine_info()})


def export_onnx_cmd(
    ckpt: Annotated[Path, typer.Option("--ckpt", help="Checkpoint folder to export.")],
    out_path: Annotated[Path, typer.Option("--out", help="ONNX file to write.")],
    height: Annotated[int, typer.Option("--height", min=32, help="Frame height the graph takes (fixed; batch is dynamic).")] = 360,
    width: Annotated[int, typer.Option("--width", min=32, help="Frame width the graph takes.")] = 480,
    opset: Annotated[int, typer.Option("--opset", min=11, help="ONNX opset.")] = 17,
    frames: Annotated[int, typer.Option("--frames", min=1, help="Synthetic frames to check parity on.")] = 4,
    threads: Annotated[int, typer.Option("--threads", min=1, help="ONNX Runtime threads for the check.")] = 2,
) -> None:
    """Export a checkpoint to ONNX (frame in [0,1] -> full-res logits) and check it against PyTorch on synthetic frames."""

    from tandemseg.data.synthetic import SyntheticScenes
    from tandemseg.models.checkpoint import load_checkpoint
    from tandemseg.models.onnx_export import export_onnx, onnx_latency, onnx_parity

    ck = load_checkpoint(ckpt)
    with console.status(f"exporting {ckpt} to {out_path}"):
        path = export_onnx(ck.model, out_path, input_hw=(height, width), opset=opset)
    scenes = SyntheticScenes("val", size=(height, width), frames=frames)
    x = to_tensor([scenes[i].image for i in range(frames)])  # (N, 3, H, W)
    parity = onnx_parity(ck.model, path, x, threads=threads)
    ms = onnx_latency(path, (height, width), threads=threads)
    size_mb = path.stat().st_size / 1e6
    out.print(
        f"wrote {path} ({size_mb:.1f} MB, {ck.kind}, input frame 1x3x{height}x{width}, batch dynamic, opset {opset})\n"
        f"parity on {parity['frames']} synthetic frames: max |logit diff| {parity['max_abs_diff']:.2e}, "
        f"argmax agreement {100 * parity['argmax_agreement']:.3f}%\n"
        f"ONNX Runtime latency: {ms:.1f} ms median ({threads} threads)"
    )


@app.command()
def codec(
    device_ckpt: Annotated[Path, typer.Option(help="device checkpoint the codec was trained on")],
    codec_ckpt: Annotated[Path, typer.Option(help="feature codec checkpoint")],
    cloud_ckpt: Annotated[Path, typer.Option(help="cloud model the decode time is compared with")],
    data: Annotated[str, typer.Option(help="dataset spec the frames come from")] = "synthetic",
    split: Annotated[str, typer.Option(help="data split")] = "val",
    frames: Annotated[int, typer.Option(min=1, help="frames timed (after 2 warm-up frames)")] = 20,
    threads: Annotated[int, typer.Option(min=1, help="torch CPU threads")] = 1,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the figures here")] = None,
) -> None:
    """Device: model alone vs model + feature encoding (JD's encode overhead); cloud: cloud model vs feature decoding."""
    import torch

    from tandemseg.codec.checkpoint import load_codec
    from tandemseg.data.spec import open_dataset
    from tandemseg.eval.codec import codec_latency
    from tandemseg.models.checkpoint import load_checkpoint

    torch.set_num_threads(threads)
    dataset = open_dataset(data, split)
    dev = load_checkpoint(device_ckpt, expect_kind="device", expect_classes=dataset.classes)
    cloud = load_checkpoint(cloud_ckpt, expect_kind="cloud", expect_classes=dataset.classes)
    ck = load_codec(codec_ckpt, device=dev.model)
    images = [dataset[i].image for i in range(min(frames, len(dataset)))]
    with console.status("timing device and cloud, with and without the feature codec"):
        result = codec_latency(dev.model, ck.codec, cloud.model, images)
    payload = {"command": command_line(), "device_ckpt": str(device_ckpt), "codec_ckpt": str(codec_ckpt), "cloud_ckpt": str(cloud_ckpt),
               "data": data, "split": split, "threads": threads, "load_avg_1min": os.getloadavg()[0], "machine": machine_info(), **result}
    table = Table(title=f"feature codec latency ({threads} thread(s), median of {result['frames']} frames)")
    table.add_column("what")
    table.add_column("ms", justify="right")
    for key in ("device_ms", "device_with_encode_ms", "cloud_ms", "cloud_decode_ms"):
        table.add_row(key.removesuffix("_ms"), f"{result[key]:.1f}")
    out.print(table)
    out.print(f"encode adds {100 * result['encode_overhead']:.1f}% to the device; feature decoding is "
              f"{100 * result['decode_share_of_cloud']:.1f}% of the cloud model's time; {result['bytes_per_frame']:.0f} bytes per frame")
    write_json(json_path, payload)


@app.command()
def costs(
    data: Annotated[str, typer.Option(help="dataset spec the frames come from")] = "camvid:../shared/data/camvid",
    device_ckpt: Annotated[Path, typer.Option(help="device checkpoint")] = Path("checkpoints/camvid-device"),
    cloud_ckpt: Annotated[Path, typer.Option(help="cloud checkpoint")] = Path("checkpoints/camvid-cloud"),
    frames: Annotated[int, typer.Option(min=1, help="val frames, evenly spaced")] = 10,
    repeats: Annotated[int, typer.Option(min=1, help="timed calls per step and frame")] = 10,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the figures here")] = None,
) -> None:
    """CPU ms per frame of each step through the system on one thread (PNG, probabilities, DCAM, label map, forward)."""
    import numpy as np
    import torch

    from tandemseg.data.spec import open_dataset
    from tandemseg.eval.cost_breakdown import cost_breakdown
    from tandemseg.models.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    ds = open_dataset(data, "val")
    device = load_checkpoint(device_ckpt, expect_kind="device", expect_classes=ds.classes).model
    cloud = load_checkpoint(cloud_ckpt, expect_kind="cloud", expect_classes=ds.classes).model
    images = [ds[int(i)].image for i in np.linspace(0, len(ds) - 1, min(frames, len(ds))).astype(int)]
    with console.status("timing every step on one thread"):
        result = cost_breakdown(images, device, cloud, repeats)
    table = Table(title=f"CPU per frame, 1 thread, median over {result['frames']} frames")
    table.add_column("step")
    table.add_column("value", justify="right")
    for k, v in result["medians"].items():
        table.add_row(k, f"{v:.1f}")
    out.print(table)
    write_json(json_path, {"command": command_line(), "data": data, **result})


@app.command("exits")
def exits_cmd(
    ckpt: Annotated[Path, typer.Option("--ckpt", help="MESS checkpoint (`tandemseg exits train/search`).")],
    threads: Annotated[int, typer.Option("--threads", min=1, help="CPU threads for PyTorch and ONNX Runtime.")] = 1,
    height: Annotated[int, typer.Option("--height", min=32)] = 360,
    width: Annotated[int, typer.Option("--width", min=32)] = 480,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Timed passes per exit; the median is reported.")] = 10,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON here.")] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Also write the table and the command as Markdown here.")] = None,
) -> None:
    """Per exit of a multi-exit network: GFLOPs, CPU latency of its budgeted submodel in PyTorch and ONNX Runtime
    (one ONNX graph per exit), and the graph's parity with PyTorch."""
    ck = load_mess(ckpt)
    hw = (height, width)
    keys = [*ck.net.exit_keys, FINAL]
    gflops = gflops_table(ck.net, hw)
    with tempfile.TemporaryDirectory() as tmp, console.status(f"exporting and timing {len(keys)} exits"):
        rows = exit_latencies(ck.net, keys, hw, tmp, threads, runs=runs)
    for k in keys:
        stage = len(gflops.backbone) - 1 if k == FINAL else ck.net.stage_of(k)
        rows[k]["gflops"] = gflops.backbone[stage] + gflops.heads[k]
    table = Table(title=f"{ckpt}: budgeted exits at {height}x{width}, {threads} thread(s), median of {runs}")
    for col in ("exit", "GFLOPs", "PyTorch ms", "ONNX Runtime ms", "ONNX max |diff|", "argmax agreement"):
        table.add_column(col, justify="left" if col == "exit" else "right")
    for k, r in rows.items():
        table.add_row(k, f"{r['gflops']:.3f}", f"{r['torch_ms']:.1f}", f"{r['onnx_ms']:.1f}", f"{r['max_abs_diff']:.1e}", f"{r['argmax_agreement']:.4f}")
    out.print(table)
    payload = {"command": command_line(), "ckpt": str(ckpt), "threads": threads, "input_hw": [height, width], "runs": runs,
               "machine": machine_info(), "exits": rows}
    write_json(json_path, payload)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"# Exits of {ckpt}", "", f"```bash\n{payload['command']}\n```", "",
                 "| exit | GFLOPs | PyTorch ms | ONNX Runtime ms | ONNX max abs diff | argmax agreement |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {k} | {r['gflops']:.3f} | {r['torch_ms']:.1f} | {r['onnx_ms']:.1f} | {r['max_abs_diff']:.1e} | {r['argmax_agreement']:.4f} |" for k, r in rows.items()]
        markdown.write_text("\n".join(lines) + "\n")


@app.command("adaptation")
def adaptation_cmd(
    device_ckpt: Annotated[Path, typer.Option("--device-ckpt", help="device checkpoint")],
    threads: Annotated[int, typer.Option("--threads", min=1)] = 1,
    height: Annotated[int, typer.Option("--height", min=32)] = 360,
    width: Annotated[int, typer.Option("--width", min=32)] = 480,
    runs: Annotated[int, typer.Option("--runs", min=1)] = 20,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON here.")] = None,
) -> None:
    """Device-side cost of adaptation: ms per frame of the shipped model, per-frame BatchNorm statistics (bn, and
    CEMA's device), Tent, timed round-robin; and the ms and bytes of checking and swapping in one CEMA update."""
    import torch

    from tandemseg.eval.adaptation import device_step_latency
    from tandemseg.models.adaptation import adapted_parameters
    from tandemseg.models.checkpoint import load_checkpoint

    torch.set_num_threads(threads)
    model = load_checkpoint(device_ckpt, expect_kind="device").model
    frame = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    tensors = {k: v.detach().clone() for k, v in adapted_parameters(model).items()}
    result = device_step_latency(model, frame, runs, update=(0, tensors))
    table = Table(title=f"{device_ckpt}: device-side adaptation cost, {height}x{width}, {threads} thread(s), median of {runs}")
    table.add_column("what")
    table.add_column("value", justify="right")
    for k, v in result.items():
        table.add_row(k, f"{v:.1f}" if isinstance(v, float) else str(v))
    out.print(table)
    overhead = result["bn_ms"] / result["none_ms"] - 1
    out.print(f"per-frame statistics (CEMA's device) cost {100 * overhead:+.1f}% per frame against the shipped model")
    write_json(json_path, {"command": command_line(), "device_ckpt": str(device_ckpt), "threads": threads, "input_hw": [height, width],
                           "runs": runs, "machine": machine_info(), **result, "bn_overhead": overhead})
