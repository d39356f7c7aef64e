"""The demo's panel: for a few frames per condition, the frame, the device's map, the cloud's map, the final map
and the label, each row captioned with whether the frame was uploaded and why (score against threshold)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tandemseg.data.classes import ClassTable
from tandemseg.eval.preview import draw_grid
from tandemseg.eval.walkthrough import FrameTrace, decision_text

COLUMNS = ("frame", "device map", "cloud map", "final map", "label")
FINAL_COLUMN = COLUMNS.index("final map")
UPLOADED, KEPT = "tab:red", "0.25"  # caption colours: an upload stands out


def draw_panel(traces: Sequence[FrameTrace], classes: ClassTable, out_path: str | Path, title: str | None = None) -> Path:
    """One row per trace (COLUMNS), the decision written under the final map; returns the PNG's path."""
    if not traces:
        raise ValueError("draw_panel needs at least one frame")
    cells = [[t.image, *(classes.colorize(m) for m in (t.device, t.cloud, t.final, t.label))] for t in traces]
    labels = [f"#{t.index} {t.condition}" for t in traces]
    captions = [(FINAL_COLUMN, decision_text(t), UPLOADED if t.uploaded else KEPT) for t in traces]
    return draw_grid(cells, COLUMNS, labels, classes, out_path, captions, title)
