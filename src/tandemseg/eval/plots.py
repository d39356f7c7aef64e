"""Curves for collaborative evaluation: mIoU against upload rate, per policy, with device/cloud-only lines."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"oracle": ("k", "--"), "acdc": ("tab:red", "-"), "acdc_ent": ("tab:purple", "-"), "entropy": ("tab:blue", "-"),
         "cema": ("tab:green", "-"), "confidence": ("tab:orange", "-"), "random": ("tab:gray", ":")}


def plot_sweep(payload: dict, path: str | Path, title: str = "") -> Path:
    """One line per policy through its (achieved rate, collab mIoU) points; horizontal device and cloud lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    series: dict[str, list[tuple[float, float]]] = {}
    for r in payload["rows"]:
        series.setdefault(r["policy"], []).append((r["upload_rate"], r["collab_miou"]))
    for name, pts in series.items():
        pts.sort()
        color, ls = STYLE.get(name, (None, "-."))
        ax.plot([p[0] * 100 for p in pts], [p[1] * 100 for p in pts], marker="o", ms=3, color=color, ls=ls, label=name)
    ax.axhline(payload["device_miou"] * 100, color="0.3", lw=1, ls="-", label="device only")
    ax.axhline(payload["cloud_miou"] * 100, color="0.3", lw=1, ls="--", label="cloud only")
    ax.set_xlabel("frames uploaded (%)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
