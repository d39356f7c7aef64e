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


def fixed_mmap_threshold(threshold: int = 128 * 1024) -> bool:
    """Serve allocations >= `threshold` bytes from mmap for the life of this process (glibc only).

    glibc raises its mmap threshold each time a large block is freed, after which frame-sized
    temporaries come from the heap; interleaved with small long-lived objects (per-frame statistics,
    cached results) the heap then only grows. Measured on `fit-uncertainty` over CamVid: about 7 MB of
    RSS per frame without this, flat with it. Returns whether the setting took effect.
    """
    import ctypes

    try:
        # the symbols already loaded into this process: no library search (find_library would run ldconfig
        # on every start of the CLI)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    return bool(mallopt(-3, threshold))  # -3 = M_MMAP_THRESHOLD; setting it also stops glibc's adjustment


def metrics_table(title: str, payload: dict, keys: Iterable[str]) -> Table:
    """A two-column rich table of payload[key] for `keys`: '-' for missing, ints and booleans as they are, floats to 4 places."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in keys:
        v = payload.get(key)
        table.add_row(key, "-" if v is None else (str(v) if isinstance(v, (bool, int)) else f"{v:.4f}"))
    return table
