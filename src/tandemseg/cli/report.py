"""`tandemseg report ...`: the Markdown tables of docs/results/* rebuilt from the JSON the commands wrote.

Thin wrappers over eval/report.py; the scripts in scripts/ call these instead of Python of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer

from tandemseg.cli.common import console, out
from tandemseg.errors import SpecError
from tandemseg.eval import report

app = typer.Typer(no_args_is_help=True, add_completion=False)


def write_table(build: Callable[[Path], str], folder: Path, out_path: Path) -> None:
    """Build the Markdown from `folder`, write it to `out_path` and print it."""
    if not folder.is_dir():
        raise SpecError(f"{folder} is not a folder of results; run the script that writes it first")
    text = build(folder)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text)
    out.print(text, markup=False, highlight=False, end="")
    console.print(f"[dim]wrote {out_path}[/dim]")


@app.command("models")
def models(
    folder: Path = typer.Argument(..., help="folder of `tandemseg eval --json` files named {device,cloud}-<shift>.json"),
    out_path: Path = typer.Option(None, "--out", help="where to write the table (default: FOLDER/table.md)"),
) -> None:
    """Device and cloud mIoU per shift (docs/results/models/<kind>/table.md)."""
    write_table(report.models_table, folder, out_path or folder / "table.md")


@app.command("offloading")
def offloading(
    folder: Path = typer.Argument(..., help="folder of `tandemseg collab` JSON: sweep-*, hindsight-*, run-*"),
    out_path: Path = typer.Option(None, "--out", help="where to write the tables (default: FOLDER/tables.md)"),
) -> None:
    """Policies x rates per shift, the U ablation, costs and single runs (docs/results/offloading/<kind>/tables.md)."""
    write_table(report.offloading_tables, folder, out_path or folder / "tables.md")


@app.command("service")
def service(
    folder: Path = typer.Argument(..., help="folder of device-*, collab-*, loadtest-* and payload-bytes JSON"),
    out_path: Path = typer.Option(None, "--out", help="where to write the tables (default: FOLDER/tables.md)"),
) -> None:
    """DCAM through the server, serving efficiency, payload bytes (docs/results/service/tables.md)."""
    write_table(report.service_tables, folder, out_path or folder / "tables.md")


@app.command("codec")
def codec(
    folder: Path = typer.Argument(..., help="folder of rd.json, rd-k.json and bench.json (scripts/codec_results.sh)"),
    out_path: Path = typer.Option(None, "--out", help="where to write the tables (default: FOLDER/tables.md)"),
) -> None:
    """Feature codec: RD points, the JD target, cloud-side cost, K ablation, latency (docs/results/codec/tables.md)."""
    write_table(report.codec_tables, folder, out_path or folder / "tables.md")


@app.command("exits")
def exits(
    folder: Path = typer.Argument(..., help="folder of search-*.json, eval-*.json and *-card.json (scripts/exits_results.sh)"),
    out_path: Path = typer.Option(None, "--out", help="where to write the tables (default: FOLDER/tables.md)"),
) -> None:
    """MESS: searched configurations, val evaluation, per-exit mIoU per training run (docs/results/exits/tables.md)."""
    write_table(report.exits_tables, folder, out_path or folder / "tables.md")


@app.command("adaptation")
def adaptation(
    folder: Path = typer.Argument(..., help="folder of `tandemseg adapt --json` files named sev<S>-<method>.json (scripts/adaptation_results.sh)"),
    out_path: Path = typer.Option(None, "--out", help="where to write the tables (default: FOLDER/tables.md)"),
) -> None:
    """CEMA's comparison: online device mIoU with intervals, per corruption, uploads and bytes; curve PNGs."""
    write_table(report.adaptation_tables, folder, out_path or folder / "tables.md")


@app.command("field")
def field(
    path: Path = typer.Argument(..., help="a JSON results file"),
    key: str = typer.Argument(..., help="dotted key, e.g. throughput_fps or rounds.0.raw_fps"),
    times: float = typer.Option(None, help="print the value multiplied by this (a number is required then)"),
) -> None:
    """Print one value of a results file (for scripts that feed one run's result into the next)."""
    if not path.is_file():
        raise SpecError(f"{path} does not exist")
    try:
        value = report.json_field(path, key)
    except KeyError as e:
        raise SpecError(str(e.args[0])) from None
    if times is not None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(f"{key} in {path} is {value!r}, not a number to multiply")
        value = value * times
    typer.echo(value)
