"""`tandemseg demo`: the whole edge-cloud job on the embedded synthetic scenes, with the committed
synthetic checkpoints; nothing is downloaded or trained. It composes library calls (preview, evaluate,
the collab cache and sweep, the device runtime) and writes everything under --out:

  preview.png   frames of the stream next to their labels and clean originals
  alone.json    device and cloud mIoU, clean and under the stream
  collab.json   every upload policy at three target rates (+ collab.png, the curves)
  fusion.json   CFE (ACDC's collaborative fusion) against "cloud or device" at the same uploads
  panel.png     a few frames per condition through the real DeviceRuntime (with CFE): frame, device map, cloud
                map, final map, label, and why each was uploaded or kept (score against the threshold)
  panel.json    the decision of every frame of that run
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import typer
from rich.markdown import Markdown
from rich.table import Table

from tandemseg.cli import offload as offload_cli
from tandemseg.cli.common import console, out, progress, write_json
from tandemseg.cli.fusion import fusion_markdown
from tandemseg.cloud.service import CloudService, ModelSegmenter
from tandemseg.data.base import SegDataset
from tandemseg.data.spec import open_dataset
from tandemseg.device.budget import BudgetSpec, make_controller
from tandemseg.device.link import InProcessLink
from tandemseg.device.policies import make_policy
from tandemseg.device.runtime import DeviceRuntime
from tandemseg.device.steps import FusionStep
from tandemseg.device.uncertainty import UncertaintyMatrix
from tandemseg.errors import TandemsegError
from tandemseg.eval import cache as K
from tandemseg.eval import collab as C
from tandemseg.eval import metrics as M
from tandemseg.eval.evaluate import evaluate
from tandemseg.eval.fusion import BASE, Variant, fusion_table, upload_masks
from tandemseg.eval.panel import draw_panel
from tandemseg.eval.plots import plot_sweep
from tandemseg.eval.preview import preview_grid
from tandemseg.eval.walkthrough import FrameTrace, pick_frames, walk_stream
from tandemseg.fusion.checkpoint import load_fusion
from tandemseg.models.checkpoint import load_checkpoint

CHECKPOINTS = Path("checkpoints")
# A stream whose difficulty drifts: clean frames, then fog, sensor noise and dusk, 15 frames each.
DEMO_SHIFT = "stream:clean,fog:3,gaussian_noise:3,dusk/15"
SWEEP_RATES = (0.1, 0.2, 0.3)
FUSION_RATES = (0.1, 0.2)
PANEL_POLICY, PANEL_RATE = "acdc", 0.2
PANEL_FRAMES_PER_CONDITION = 2


def demo(
    out_dir: Path = typer.Option(Path("demo-out"), "--out", help="folder for the pictures and JSON"),
    frames: int = typer.Option(60, help="synthetic val frames to run (the stream holds each condition 15 frames)"),
    shift: str = typer.Option(DEMO_SHIFT, help="shift or stream the collaboration runs under"),
    checkpoints: Path = typer.Option(CHECKPOINTS, help="folder holding synthetic-device, synthetic-cloud, synthetic-uncertainty.safetensors"),
    threads: int = typer.Option(2, min=1, help="torch CPU threads"),
) -> None:
    """Run the device alone, the cloud alone, the two in tandem under every upload policy, and show a few frames."""
    device_ckpt, cloud_ckpt = checkpoints / "synthetic-device", checkpoints / "synthetic-cloud"
    u_path = checkpoints / "synthetic-uncertainty.safetensors"
    for p in (device_ckpt, cloud_ckpt, u_path, checkpoints / "synthetic-fusion"):
        if not p.exists():
            raise TandemsegError(f"{p} is missing; run the demo from the repository root (or pass --checkpoints)")
    if frames < 4:
        raise TandemsegError("--frames must be at least 4")
    torch.set_num_threads(threads)
    out_dir.mkdir(parents=True, exist_ok=True)

    console.rule("[bold]1. the data: synthetic driving scenes and the shifts they run under")
    clean = open_dataset("synthetic", "val")
    shifted = open_dataset("synthetic", "val", shift)
    preview_grid(clean, shifted, 4, out_dir / "preview.png", indices=[0, 15, 30, 45], shift_label=shift)
    console.print(f"wrote {out_dir / 'preview.png'}")

    console.rule("[bold]2. each model alone")
    device = load_checkpoint(device_ckpt, "device", expect_classes=clean.classes).model
    cloud = load_checkpoint(cloud_ckpt, "cloud", expect_classes=clean.classes).model
    cache = device_and_cloud_once(shifted, device, cloud, frames)  # every frame of the stream, once per model
    alone = models_alone({"device": device, "cloud": cloud}, clean, frames, cache, shift)
    write_json(out_dir / "alone.json", {"frames": frames, "shift": shift, "miou": alone})

    console.rule("[bold]3. in tandem: which frames should the device upload?")
    um = UncertaintyMatrix.load(u_path, expect_classes=clean.classes)
    sweep_policies(cache, um, shift, out_dir)

    console.rule("[bold]4. CFE: refine the device's map where it is unsure, fuse the cloud's answer into it")
    fuse = FusionStep(load_fusion(checkpoints / "synthetic-fusion", device, expect_classes=clean.classes).fusion, "cfe")
    fusion_summary(shifted, device, cloud, um, cache, fuse, frames, out_dir)

    console.rule(f"[bold]5. a look at the frames: {PANEL_POLICY} at {PANEL_RATE:.0%} through the device runtime, with CFE")
    traces = walk_runtime(shifted, device, cloud, um, cache, frames, fuse)
    show_frames(traces, shifted, out_dir)
    console.print(f"\n[bold]done.[/bold] Look at {out_dir / 'panel.png'}, {out_dir / 'collab.png'} and {out_dir / 'preview.png'}; "
                  f"numbers in {out_dir}/*.json")


def models_alone(models: dict, clean: SegDataset, frames: int, cache: K.CollabCache, shift: str) -> dict[str, float]:
    """mIoU of each model on the first `frames` clean frames (evaluated here) and on the stream (from the cache of
    per-frame confusion matrices: no second pass), printed as a table; keys 'model/condition'."""
    alone = {}
    with progress() as bar:
        for name, model in models.items():
            task = bar.add_task(f"{name} (clean)", total=min(frames, len(clean)), info="")
            alone[f"{name}/clean"] = evaluate(model, clean, limit=frames, on_batch=lambda k, t=task: bar.advance(t, k))["miou"]
    alone[f"device/{shift}"] = M.miou_of(cache.device_cm.sum(0))
    alone[f"cloud/{shift}"] = M.miou_of(cache.cloud_cm.sum(0))
    table = Table(title=f"mIoU on {frames} synthetic val frames")
    for column in ("model", "clean", shift):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name in models:
        table.add_row(name, f"{alone[f'{name}/clean']:.3f}", f"{alone[f'{name}/{shift}']:.3f}")
    out.print(table)
    return alone


def device_and_cloud_once(dataset: SegDataset, device, cloud, frames: int) -> K.CollabCache:
    """Both models once per frame (the cloud through CloudService on the PNG payload): what every policy replays,
    the stream's mIoU of each model alone, and the cloud maps of the panel."""
    with progress() as bar:
        task = bar.add_task("device + cloud per frame", total=min(frames, len(dataset)), info="")
        return K.build_cache(dataset, device, cloud, "png", limit=frames, on_frame=lambda: bar.advance(task))


def sweep_policies(cache: K.CollabCache, um: UncertaintyMatrix, shift: str, out_dir: Path) -> None:
    """Every upload policy at SWEEP_RATES on the cached stream: a table, collab.json and the curves in collab.png."""
    result = C.sweep_policies(cache, SWEEP_RATES, C.SWEEP_POLICIES, um, {})
    payload = {"data": "synthetic", "split": "val", "shift": shift, "codec": "png", **K.cache_info(cache), **result}
    offload_cli.print_sweep(payload)
    plot_sweep(payload, out_dir / "collab.png", title=f"synthetic val ({shift})")
    write_json(out_dir / "collab.json", payload)


def fusion_summary(dataset: SegDataset, device, cloud, um: UncertaintyMatrix, cache: K.CollabCache, fuse: FusionStep,
                   frames: int, out_dir: Path) -> None:
    """The stream once more through the runtime with the CFE fuse step, then base and CFE at the same uploads."""
    with progress() as bar:
        task = bar.add_task("device + cloud + CFE per frame", total=min(frames, len(dataset)), info="")
        with_cfe = K.build_cache(dataset, device, cloud, "png", limit=frames, on_frame=lambda: bar.advance(task), fuse=fuse)
    masks = upload_masks(cache, ("acdc", "entropy"), FUSION_RATES, um)
    result = fusion_table([Variant(BASE, "none", cache), Variant("cfe", "cfe", with_cfe)], masks, resamples=200)
    out.print(Markdown(fusion_markdown({"data": "synthetic", "split": "val", "shift": "demo stream", **result})))
    write_json(out_dir / "fusion.json", result)


def walk_runtime(dataset: SegDataset, device, cloud, um: UncertaintyMatrix, cache: K.CollabCache, frames: int,
                 fuse: FusionStep | None = None) -> list[FrameTrace]:
    """The stream through DeviceRuntime + InProcessLink with PANEL_POLICY at PANEL_RATE, frame by frame."""
    u = copy.deepcopy(um)  # the run may not change the loaded matrix
    runtime = DeviceRuntime(device, make_policy(PANEL_POLICY, u), make_controller(BudgetSpec(rate=PANEL_RATE)),
                            InProcessLink(CloudService(ModelSegmenter(cloud), dataset.classes)), uncertainty=u, fuse=fuse)
    try:
        with progress() as bar:
            task = bar.add_task("device runtime", total=min(frames, len(dataset)), info="")
            return walk_stream(dataset, runtime, cache.cloud_pred, frames, on_frame=lambda: bar.advance(task))
    finally:
        runtime.close()


def show_frames(traces: list[FrameTrace], dataset: SegDataset, out_dir: Path) -> None:
    """panel.png of a few frames per condition, panel.json of every decision, and a one-line summary."""
    picked = pick_frames(traces, PANEL_FRAMES_PER_CONDITION)
    title = f"{PANEL_POLICY} at a {PANEL_RATE:.0%} target: a frame goes to the cloud when its score u exceeds the controller's threshold"
    draw_panel(picked, dataset.classes, out_dir / "panel.png", title)
    decisions = [{"frame": t.index, "condition": t.condition, "score": t.score, "threshold": t.threshold, "uploaded": t.uploaded,
                  "provenance": t.provenance} for t in traces]
    write_json(out_dir / "panel.json", {"policy": PANEL_POLICY, "target_rate": PANEL_RATE, "frames": decisions,
                                        "shown": [t.index for t in picked]})
    uploads = sum(t.uploaded for t in traces)
    console.print(f"wrote {out_dir / 'panel.png'}: {len(picked)} frames shown; {uploads} of {len(traces)} frames uploaded")
