"""Shared CLI plumbing: the console, JSON output, progress bars, and spec validation helpers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from tandemseg import jsonio

console = Console(stderr=True)
out = Console()
T = TypeVar("T")


def write_json(path: Path | None, payload: dict) -> None:
    """Write `payload` to `path` (parents created, NaN -> null: jsonio) when the user asked for --json."""
    if path is None:
        return
    console.print(f"[dim]wrote {jsonio.write_json(path, payload)}[/dim]")


def progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=False,
    )


def track(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    """Iterate with a rich progress bar on stderr."""
    with progress() as bar:
        task = bar.add_task(description, total=total, info="")
        for item in items:
            yield item
            bar.advance(task)


def metrics_table(title: str, payload: dict, keys: Iterable[str]) -> Table:
    """A two-column rich table of payload[key] for `keys`: '-' for missing, ints and booleans as they are, floats to 4 places."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in keys:
        v = payload.get(key)
        table.add_row(key, "-" if v is None else (str(v) if isinstance(v, (bool, int)) else f"{v:.4f}"))
    return table
