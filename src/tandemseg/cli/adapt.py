"""`tandemseg adapt`: a thin wrapper over eval/adaptation.py (CEMA's comparison on a continual stream)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import typer

from tandemseg.cli.common import metrics_table, out, progress, write_json
from tandemseg.cloud.adaptation.config import AdaptConfig
from tandemseg.data.shifts.continual import CONTINUAL, continual_stream
from tandemseg.data.spec import open_dataset
from tandemseg.errors import SpecError
from tandemseg.eval.adaptation import CLOUD_METHODS, AdaptSetup, check_method, run_adaptation
from tandemseg.eval.plots import plot_adaptation
from tandemseg.models.checkpoint import load_checkpoint


def parse_options(pairs: list[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq:
            raise SpecError(f"--adapt-option takes key=value, got {pair!r}")
        options[key.strip()] = value.strip()
    return options


def adapt(
    data: str = typer.Option(..., help="dataset spec"),
    split: str = typer.Option("val", help="split whose frames make the stream"),
    stream: str = typer.Option("continual:3", help="continual:SEV (the 15 corruptions in turn) or continual:SEV:fog,snow,..."),
    frames_per_condition: int = typer.Option(None, min=1, help="the split's first N frames under each condition (default: all)"),
    method: str = typer.Option("cema", help="none | bn | tent | cema | upload-all"),
    device_ckpt: Path = typer.Option(..., help="device checkpoint"),
    cloud_ckpt: Path = typer.Option(None, help="cloud checkpoint (cema, upload-all in process)"),
    adapt_option: list[str] = typer.Option([], "--adapt-option", help="adaptation setting key=value (cloud/adaptation/config.py), repeatable"),
    local_lr: float = typer.Option(1e-4, help="tent's learning rate on the device"),
    cema_quantiles: str = typer.Option("0.4,0.8", help="cema: the band (E_min^t, E_max^t) as running quantiles of the device's recent "
                                       "frame entropies; 'paper' keeps CEMA's fractions of ln C"),
    window: int = typer.Option(50, min=1, help="frames per point of the online mIoU curve"),
    server: str = typer.Option(None, help="run against `tandemseg serve --adapt` at this URL instead of in process"),
    token: str = typer.Option(None, help="the device's token for --server (default: TANDEMSEG_TOKEN)"),
    device_id: str = typer.Option("dev0", help="device id (with --server: the token's device)"),
    seed: int = typer.Option(0, help="seeds the shifts' per-frame noise"),
    threads: int = typer.Option(1, min=1, help="torch CPU threads"),
    json_path: Path = typer.Option(None, "--json", help="write the figures here"),
    plot: Path = typer.Option(None, help="write the online mIoU curve (PNG) here"),
) -> None:
    """Online adaptation of the device model on a continual stream: CEMA against its baselines."""
    torch.set_num_threads(threads)
    check_method(method)
    if not stream.startswith(CONTINUAL):
        raise SpecError(f"--stream takes {CONTINUAL}SEV or {CONTINUAL}SEV:NAME,..., got {stream!r}")
    config = AdaptConfig.from_options(parse_options(adapt_option))
    frames = continual_stream(open_dataset(data, split), stream, frames_per_condition, seed)
    device = load_checkpoint(device_ckpt, expect_kind="device", expect_classes=frames.classes).model
    cloud = None
    if method in CLOUD_METHODS and server is None:
        if cloud_ckpt is None:
            raise SpecError(f"--method {method} adapts in the cloud: give --cloud-ckpt (in process) or --server")
        cloud = load_checkpoint(cloud_ckpt, expect_kind="cloud", expect_classes=frames.classes).model
    link = _http_link(server, token, device_id) if server and method in CLOUD_METHODS else None
    quantiles = None if cema_quantiles == "paper" else _quantiles(cema_quantiles)
    setup = AdaptSetup(device, cloud, config, device_id=device_id, local_lr=local_lr, window=window, cema_quantiles=quantiles)
    with progress() as bar:
        task = bar.add_task(f"{method} on {stream}", total=len(frames), info="")
        result = run_adaptation(method, frames, setup, link, on_frame=lambda i: bar.advance(task))
    result.update(data=data, split=split, stream=stream, frames_per_condition=len(frames) // max(1, len(result["per_condition"])),
                  device_ckpt=str(device_ckpt), cloud_ckpt=str(cloud_ckpt) if cloud_ckpt else None, server=server, threads=threads)
    keys = ("device_miou", "final_device_miou", "uploads", "upload_rate", "bytes_up", "bytes_down", "updates_applied", "frames",
            "device_ms_median")
    out.print(metrics_table(f"adaptation {method} on {data} {split} {stream}", result, keys))
    cms, sources = result.pop("frame_cms"), result.pop("source_frames")
    if json_path is not None:  # per-frame confusion matrices next to the JSON: the report's paired bootstrap reads them
        json_path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(json_path.with_suffix(".cms.npz"), cms=cms, source=np.array(sources))
        result["frame_cms_file"] = json_path.with_suffix(".cms.npz").name
    write_json(json_path, result)
    if plot:
        plot_adaptation([result], plot, f"{method}: online device mIoU, {stream}")


def _quantiles(text: str) -> tuple[float, float]:
    try:
        low, high = (float(t) for t in text.split(","))
    except ValueError:
        raise SpecError(f"--cema-quantiles takes LOW,HIGH (e.g. 0.4,0.8) or 'paper', got {text!r}") from None
    if not 0 <= low < high <= 1:
        raise SpecError(f"--cema-quantiles needs 0 <= LOW < HIGH <= 1, got {text!r}")
    return low, high


def _http_link(server: str, token: str | None, device_id: str):
    from tandemseg.device.http_link import HttpLink

    token = token or os.environ.get("TANDEMSEG_TOKEN")
    if not token:
        raise SpecError("give --token (or set TANDEMSEG_TOKEN) with --server")
    return HttpLink(server, token, device_id)
