"""Curves for collaborative evaluation: mIoU against target upload rate, per policy, with bootstrap bands and device/cloud-only lines."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"oracle": ("k", "--"), "acdc": ("tab:red", "-"), "acdc_ent": ("tab:purple", "-"), "entropy": ("tab:blue", "-"),
         "cema": ("tab:green", "-"), "confidence": ("tab:orange", "-"), "random": ("tab:gray", ":")}


def plot_sweep(payload: dict, path: str | Path, title: str = "") -> Path:
    """One line per policy through its (target rate, collab mIoU) points with its bootstrap interval as a band;
    horizontal device and cloud lines. Policies are compared at the rate they were asked for (the achieved rates
    are in the JSON); the legend gives each policy's AUC over 2-30% when the sweep has one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    series: dict[str, list[tuple[float, float, list[float] | None]]] = {}
    for r in payload["rows"]:
        series.setdefault(r["policy"], []).append((r.get("target_rate", r["upload_rate"]), r["collab_miou"], r.get("collab_miou_ci")))
    auc = payload.get("auc", {}).get("policies", {})
    for name, pts in series.items():
        pts.sort(key=lambda p: p[0])
        color, ls = STYLE.get(name, (None, "-."))
        label = f"{name} (AUC {100 * auc[name]['auc']:.1f})" if name in auc else name
        x = [p[0] * 100 for p in pts]
        (line,) = ax.plot(x, [p[1] * 100 for p in pts], marker="o", ms=3, color=color, ls=ls, label=label)
        if all(p[2] is not None for p in pts):
            ax.fill_between(x, [p[2][0] * 100 for p in pts], [p[2][1] * 100 for p in pts], color=line.get_color(), alpha=0.12, lw=0)
    ax.axhline(payload["device_miou"] * 100, color="0.3", lw=1, ls="-", label="device only")
    ax.axhline(payload["cloud_miou"] * 100, color="0.3", lw=1, ls="--", label="cloud only")
    ax.set_xlabel("target upload rate (% of frames)")
    ax.set_ylabel("mIoU (%), bands: 95% bootstrap interval" if any(r.get("collab_miou_ci") for r in payload["rows"]) else "mIoU (%)")
    return _finish(fig, ax, path, title, "lower right")


def plot_rd(payload: dict, path: str | Path, title: str = "") -> Path:
    """JD Fig. 5: mIoU vs bits per input pixel (log x), one curve per method; the cloud model on the original frames
    and the device alone as horizontal references when the payload has them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    series: dict[str, list[tuple[float, float]]] = {}
    for p in payload["points"]:
        series.setdefault(p["method"], []).append((p["bpp"], p["miou"]))
    for name, pts in series.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", ms=3, label=name)
    refs = payload.get("references", {})
    for key, ls in (("cloud_original_miou", "--"), ("device_miou", "-")):
        if refs.get(key) is not None:
            ax.axhline(100 * refs[key], color="0.3", lw=1, ls=ls, label=key.replace("_miou", "").replace("_", " "))
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel of the input frame (log)")
    ax.set_ylabel("mIoU (%)")
    return _finish(fig, ax, path, title, "lower right", grid_which="both")


def plot_adaptation(runs: list[dict], path: str | Path, title: str = "") -> Path:
    """Online device mIoU over a continual stream (one point per window of frames), one curve per method, with the
    conditions marked where they change."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8.0, 4.0), dpi=120)
    for run in runs:
        w, ys = run["curve"]["window"], run["curve"]["miou"]
        ax.plot([w * (i + 0.5) for i in range(len(ys))], [100 * y for y in ys], lw=1.2, label=run["method"])
    per = runs[0].get("frames_per_condition") if runs else None
    if per:
        for j, name in enumerate(runs[0]["per_condition"]):
            ax.axvline(j * per, color="0.85", lw=0.8)
            ax.text(j * per + 2, ax.get_ylim()[1], name.split(":")[0][:8], fontsize=5, rotation=90, va="top")
    ax.set_xlabel("frame of the stream")
    ax.set_ylabel("online device mIoU (%)")
    return _finish(fig, ax, path, title, "lower left")


def plot_exit_policies(runs: dict[str, dict], path: str | Path, title: str = "") -> Path:
    """MESS Fig. 4: mIoU vs GFLOPs per frame of each exit policy, one panel per shift (`runs`: shift -> curves)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(runs), figsize=(4.4 * len(runs), 3.8), dpi=120, squeeze=False)
    for ax, (shift, run) in zip(axes[0], runs.items(), strict=True):
        for name, pts in run["curves"].items():
            pts = sorted(pts, key=lambda p: p["gflops"])
            ax.plot([p["gflops"] for p in pts], [100 * p["miou"] for p in pts], marker=".", ms=3, lw=1,
                    ls="--" if name == "oracle" else "-", label=name)
        ax.plot([run["final"]["gflops"]], [100 * run["final"]["miou"]], "k*", ms=8, label="final exit")
        ax.set_xlabel("GFLOPs per frame")
        ax.set_ylabel("mIoU (%)")
        ax.set_title(f"{shift} ({run['frames']} frames)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _finish(fig, ax, path: Path, title: str, legend_loc: str, grid_which: str = "major") -> Path:
    """The common end of a one-panel figure: title, grid, legend, saved and closed."""
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which=grid_which)
    ax.legend(fontsize=7, loc=legend_loc)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
