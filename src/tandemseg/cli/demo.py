"""`tandemseg demo`: the whole edge-cloud job on the embedded synthetic scenes, with the committed
synthetic checkpoints; nothing is downloaded or trained. It composes the library calls that the
individual commands make (preview, eval, collab sweep) and writes everything under --out."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from tandemseg.cli import offload as offload_cli
from tandemseg.cli.common import console, out, progress, write_json
from tandemseg.data.spec import open_dataset
from tandemseg.errors import TandemsegError
from tandemseg.eval.evaluate import evaluate
from tandemseg.eval.preview import preview_grid
from tandemseg.models.checkpoint import load_checkpoint

CHECKPOINTS = Path("checkpoints")
# A stream whose difficulty drifts: clean frames, then fog, sensor noise and dusk, 15 frames each.
DEMO_SHIFT = "stream:clean,fog:3,gaussian_noise:3,dusk/15"


def demo(
    out_dir: Path = typer.Option(Path("demo-out"), "--out", help="folder for the pictures and JSON"),
    frames: int = typer.Option(60, help="synthetic val frames to run (the stream holds each condition 15 frames)"),
    shift: str = typer.Option(DEMO_SHIFT, help="shift or stream the collaboration runs under"),
    checkpoints: Path = typer.Option(CHECKPOINTS, help="folder holding synthetic-device, synthetic-cloud, synthetic-uncertainty.safetensors"),
    threads: int = typer.Option(2, help="torch CPU threads"),
) -> None:
    """Run the device alone, the cloud alone, and the two in tandem under every upload policy."""
    device_ckpt, cloud_ckpt = checkpoints / "synthetic-device", checkpoints / "synthetic-cloud"
    u_path = checkpoints / "synthetic-uncertainty.safetensors"
    for p in (device_ckpt, cloud_ckpt, u_path):
        if not p.exists():
            raise TandemsegError(f"{p} is missing; run the demo from the repository root (or pass --checkpoints)")
    if frames < 4:
        raise TandemsegError("--frames must be at least 4")
    out_dir.mkdir(parents=True, exist_ok=True)

    console.rule("[bold]1. the data: synthetic driving scenes and the shifts they run under")
    clean = open_dataset("synthetic", "val")
    shifted = open_dataset("synthetic", "val", shift)
    preview_grid(clean, shifted, 4, out_dir / "preview.png", indices=[0, 15, 30, 45], shift_label=shift)
    console.print(f"wrote {out_dir / 'preview.png'}")

    console.rule("[bold]2. each model alone")
    models = {"device": load_checkpoint(device_ckpt, "device").model, "cloud": load_checkpoint(cloud_ckpt, "cloud").model}
    alone = {}
    with progress() as bar:
        for cond, ds in (("clean", clean), (shift, shifted)):
            for name, model in models.items():
                task = bar.add_task(f"{name} ({cond})", total=min(frames, len(ds)), info="")
                alone[f"{name}/{cond}"] = evaluate(model, ds, limit=frames, on_batch=lambda k, t=task: bar.advance(t, k))["miou"]
    table = Table(title=f"mIoU on {frames} synthetic val frames")
    table.add_column("model")
    table.add_column("clean", justify="right")
    table.add_column(shift, justify="right")
    for name in models:
        table.add_row(name, f"{alone[f'{name}/clean']:.3f}", f"{alone[f'{name}/{shift}']:.3f}")
    out.print(table)

    console.rule("[bold]3. in tandem: which frames should the device upload?")
    offload_cli.collab(
        data="synthetic", split="val", shift=shift, device_ckpt=device_ckpt, cloud_ckpt=cloud_ckpt, uncertainty=u_path,
        variant=[], policy="acdc", rate=0.1, controller="window", bytes_per_s=None, fps=10.0, codec="png",
        sweep="0.1,0.2,0.3", policies=",".join(offload_cli.SWEEP_POLICIES), dcam_alpha=0.0, send_device_probs=False,
        limit=frames, seed=0, cache_dir=None, plot=out_dir / "collab.png", threads=threads, json_path=out_dir / "collab.json",
    )
    write_json(out_dir / "alone.json", {"frames": frames, "shift": shift, "miou": alone})
    console.print(f"\n[bold]done.[/bold] Look at {out_dir / 'preview.png'} and {out_dir / 'collab.png'}; numbers in {out_dir}/*.json")
