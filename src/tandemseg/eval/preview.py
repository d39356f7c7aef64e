"""PNG grids to eyeball frames: a dataset preview (image, label in the dataset palette, shifted image) and the
generic grid under it that the demo's panel (eval/panel.py) draws with too."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tandemseg.data.base import SegDataset
from tandemseg.data.classes import ClassTable

CELL_INCHES = 3.0
LEGEND_COLUMNS = 4


def spread_indices(length: int, n: int) -> list[int]:
    """`min(n, length)` frame indices spread evenly over the dataset, first frame included."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    k = min(n, length)
    return sorted({int(i) for i in np.linspace(0, length - 1, k).round()})


def legend_handles(classes: ClassTable) -> list:
    """Legend patches: each class colour with its name, and black for ignored pixels."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=np.asarray(c) / 255.0, edgecolor="black", label=name) for name, c in zip(classes.names, classes.palette, strict=True)]
    handles.append(Patch(facecolor="black", edgecolor="black", label=f"ignore ({classes.ignore_index})"))
    return handles


def preview_grid(
    dataset: SegDataset,
    shifted: SegDataset | None,
    n: int,
    out_path: str | Path,
    indices: Sequence[int] | None = None,
    shift_label: str = "shifted",
) -> Path:
    """Draw `n` frames (evenly spread unless `indices` is given) and save the grid as PNG at `out_path`.

    Columns: image, label coloured with `dataset.classes`, and the same frame from `shifted` when given
    (it must wrap the same dataset, so index i is the same frame), titled `shift_label`. A legend lists
    the class colours; ignored pixels are black. Parent folders of `out_path` are created.
    """
    rows = list(indices) if indices is not None else spread_indices(len(dataset), n)
    samples = [dataset[i] for i in rows]
    titles = ["image", "label"] + ([shift_label] if shifted is not None else [])
    cells = []
    for idx, sample in zip(rows, samples, strict=True):
        cells.append([sample.image, dataset.classes.colorize(sample.label)] + ([shifted[idx].image] if shifted is not None else []))
    return draw_grid(cells, titles, [s.name for s in samples], dataset.classes, out_path)


def draw_grid(
    cells: Sequence[Sequence[np.ndarray]], titles: Sequence[str], row_labels: Sequence[str], classes: ClassTable, out_path: str | Path,
    captions: Sequence[tuple[int, str, str] | list[tuple[int, str, str]]] | None = None, title: str | None = None,
) -> Path:
    """Save a grid of RGB pictures (one row per frame, a title per column, a label per row) with the class legend.

    `captions`: per row, (column, text, colour) written under that cell (e.g. why a frame was uploaded), or a list
    of such triples for several cells of the row.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    aspect = cells[0][0].shape[0] / cells[0][0].shape[1]
    legend_rows = (classes.num_classes + 1 + LEGEND_COLUMNS - 1) // LEGEND_COLUMNS
    caption_inches = 0.25 if captions else 0.0
    height = (CELL_INCHES * aspect + 0.15 + caption_inches) * len(cells) + 0.3 + 0.2 * legend_rows + (0.3 if title else 0.0)
    fig = Figure(figsize=(CELL_INCHES * len(titles), height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(cells), len(titles), squeeze=False)
    for r, row in enumerate(cells):
        for c, (ax, picture) in enumerate(zip(axes[r], row, strict=True)):
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=10)
        axes[r][0].set_ylabel(row_labels[r], fontsize=8)
        if captions:
            for column, text, colour in captions[r] if isinstance(captions[r], list) else [captions[r]]:
                axes[r][column].set_xlabel(text, fontsize=8, color=colour)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.legend(handles=legend_handles(classes), loc="outside lower center", ncol=LEGEND_COLUMNS, fontsize=8, frameon=False)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=100, bbox_inches="tight", pad_inches=0.05)
    return out
