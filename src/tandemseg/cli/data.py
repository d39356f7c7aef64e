"""`tandemseg data preview|stats`: look at a dataset (and a shift of it) before training on it.

Heavy imports (datasets, matplotlib) happen inside the commands so `tandemseg --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tandemseg.cli.common import console, out, track, write_json

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Inspect datasets and shifts: preview grids, statistics.")

DATASPEC_HELP = "Dataset: synthetic, camvid:PATH, cityscapes:PATH or folder:PATH."
DataSpec = Annotated[str, typer.Argument(metavar="DATASPEC", help=DATASPEC_HELP, show_default=False)]
Split = Annotated[str, typer.Option("--split", help="Split to read (train, val, test; folder datasets also 'all').")]


@app.command()
def preview(
    dataspec: DataSpec,
    out_path: Annotated[Path, typer.Option("--out", help="PNG file to write.", show_default=False)],
    split: Split = "val",
    shift: Annotated[str, typer.Option("--shift", help="Shift to show next to each frame, e.g. fog:3 or dusk.")] = "clean",
    n: Annotated[int, typer.Option("--n", min=1, help="Number of frames (rows), spread evenly over the split.")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the shift's per-frame randomness.")] = 0,
) -> None:
    """Write a grid of frames: image, label in the dataset palette, and the shifted image if --shift is given."""
    from tandemseg.data.shifts.spec import parse_shift
    from tandemseg.data.spec import open_dataset
    from tandemseg.eval.preview import preview_grid, spread_indices

    dataset = open_dataset(dataspec, split=split)
    shifted = None if parse_shift(shift) is None else open_dataset(dataspec, split=split, shift=shift, seed=seed)
    indices = spread_indices(len(dataset), n)
    with console.status(f"drawing {len(indices)} frames of {dataspec} ({split})"):
        path = preview_grid(dataset, shifted, n, out_path, indices=indices, shift_label=shift)
    console.print(f"wrote {path} ({len(indices)} frames{'' if shifted is None else f', shift {shift}'})")


@app.command()
def stats(
    dataspec: DataSpec,
    split: Split = "val",
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only read the first N frames.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the statistics as JSON here.")] = None,
) -> None:
    """Count frames, image sizes, per-class pixel frequencies and the ignored-pixel share of a split."""
    from tandemseg.data.spec import open_dataset
    from tandemseg.data.stats import dataset_stats

    dataset = open_dataset(dataspec, split=split)
    result = dataset_stats(dataset, limit=limit, progress=lambda items, total: track(items, total, f"{split} frames"))
    payload = {"dataset": dataspec, "split": split, **result}
    out.print(_stats_table(payload))
    sizes = ", ".join(f"{hw} ({count})" for hw, count in payload["image_sizes"].items()) or "-"
    out.print(f"frames: {payload['frames']}   image sizes (HxW): {sizes}   ignored pixels: {_pct(payload['ignored_fraction'])}")
    write_json(json_path, payload)


def _pct(value: float | None) -> str:
    """A share as a percentage; '-' when undefined, '<0.01%' rather than a misleading 0.00%."""
    if value is None or value != value:
        return "-"
    return "<0.01%" if 0 < value < 5e-5 else f"{100 * value:.2f}%"


def _stats_table(payload: dict) -> Table:
    """The per-class pixel-frequency table."""
    table = Table(title=f"{payload['dataset']} ({payload['split']}): {payload['frames']} frames")
    table.add_column("id", justify="right")
    table.add_column("class")
    table.add_column("share of labelled pixels", justify="right")
    for i, (name, freq) in enumerate(payload["class_frequency"].items()):
        table.add_row(str(i), name, _pct(freq))
    return table
