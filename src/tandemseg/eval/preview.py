"""A PNG grid to eyeball a dataset: one row per frame; image, label (dataset palette), shifted image."""

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


def _legend_handles(classes: ClassTable) -> list:
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
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = list(indices) if indices is not None else spread_indices(len(dataset), n)
    samples = [dataset[i] for i in rows]
    titles = ["image", "label"] + ([shift_label] if shifted is not None else [])
    aspect = samples[0].image.shape[0] / samples[0].image.shape[1]
    legend_rows = (dataset.classes.num_classes + 1 + LEGEND_COLUMNS - 1) // LEGEND_COLUMNS
    height = (CELL_INCHES * aspect + 0.15) * len(rows) + 0.3 + 0.2 * legend_rows
    fig = Figure(figsize=(CELL_INCHES * len(titles), height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), len(titles), squeeze=False)
    for r, (idx, sample) in enumerate(zip(rows, samples, strict=True)):
        cells = [sample.image, dataset.classes.colorize(sample.label)]
        if shifted is not None:
            cells.append(shifted[idx].image)
        for c, (ax, picture) in enumerate(zip(axes[r], cells, strict=True)):
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=10)
        axes[r][0].set_ylabel(sample.name, fontsize=8)
    fig.legend(handles=_legend_handles(dataset.classes), loc="outside lower center", ncol=LEGEND_COLUMNS, fontsize=8, frameon=False)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=100, bbox_inches="tight", pad_inches=0.05)
    return out
