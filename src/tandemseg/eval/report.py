"""The Markdown tables of docs/results/* from the JSON that the commands write (`tandemseg report ...`).

Each `*_tables` function reads a results folder and returns Markdown; nothing here runs a model, so a
table can be rebuilt (and tested) from committed JSON alone. What the columns mean is in the results
pages themselves (docs/results/accuracy.md, offloading.md, service.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from tandemseg.eval.bootstrap import Resamples
from tandemseg.eval.plots import plot_adaptation
from tandemseg.jsonio import read_json

# accuracy: the four evaluation shifts of issue 3, then two that no model saw in training
MODEL_SHIFTS = ("clean", "fog:3", "gaussian_noise:3", "motion_blur:3", "dusk", "glass_blur:3", "elastic_transform:3")
# offloading: the conditions of scripts/offloading_results.sh, in the order the tables show them
OFFLOADING_SHIFTS = ("clean", "dusk", "fog:3", "gaussian_noise:3", "stream:mixed/10")
OFFLOADING_POLICIES = ("acdc", "acdc_ent", "entropy", "cema", "confidence", "random", "oracle")
SERVICE_RATES = ("0.05", "0.1", "0.2")


# ----------------------------------------------------------------------------- small pieces


def pct(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage with `digits` decimals; '-' for a missing value."""
    return "-" if value is None else f"{100 * value:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None) -> list[str]:
    """Lines of a Markdown table; `align` holds one separator cell per column (default '---')."""
    separators = align or ["---"] * len(header)
    return [_row(header), _row(separators), *(_row(r) for r in rows)]


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def load_json(folder: Path, name: str) -> dict | None:
    """The JSON file `folder/name`, or None when it has not been produced (tables show what exists)."""
    path = Path(folder) / name
    return read_json(path) if path.is_file() else None


def shift_file_stem(shift: str) -> str:
    """The file-name form of a shift in models/<kind>/ ('fog:3' -> 'fog3')."""
    return shift.replace(":", "")


# ----------------------------------------------------------------------------- accuracy (scripts/models_results.sh)


def models_table(folder: Path, shifts: Sequence[str] = MODEL_SHIFTS) -> str:
    """Device and cloud mIoU per shift from `tandemseg eval --json` files named {device,cloud}-<shift>.json."""
    rows = []
    for shift in shifts:
        device, cloud = (load_json(folder, f"{model}-{shift_file_stem(shift)}.json") for model in ("device", "cloud"))
        if device is None or cloud is None:
            continue
        d, c = device["miou"], cloud["miou"]
        rows.append([shift, pct(d), pct(c), f"{100 * (c - d):+.1f}"])
    header = ["shift", "device mIoU", "cloud mIoU", "cloud - device (pp)"]
    return "\n".join(markdown_table(header, rows, ["---", "---:", "---:", "---:"])) + "\n"


# ----------------------------------------------------------------------------- offloading (scripts/offloading_results.sh)


def load_sweeps(folder: Path, prefix: str, order: Sequence[str] = OFFLOADING_SHIFTS) -> list[dict]:
    """The `collab --sweep` results `<prefix>-*.json` of a folder, one per shift, in `order` (others left out)."""
    runs = {}
    for path in Path(folder).glob(f"{prefix}-*.json"):
        sweep = read_json(path)
        runs[sweep["shift"]] = sweep
    return [runs[shift] for shift in order if shift in runs]


def ci_text(interval: Sequence[float] | None, digits: int = 1, signed: bool = False) -> str:
    """' [lo, hi]' in percent for a 95% bootstrap interval; '' when the JSON has none."""
    if not interval or interval[0] is None or interval[1] is None:
        return ""
    spec = f"+.{digits}f" if signed else f".{digits}f"
    lo, hi = (round(100 * v, digits) + 0.0 for v in interval)  # + 0.0: no '-0.0'
    return f" [{lo:{spec}}, {hi:{spec}}]"


def collab_cell(row: dict | None) -> str:
    if row is None:
        return "-"
    return f"{pct(row['collab_miou'])}{ci_text(row.get('collab_miou_ci'))} ({pct(row['upload_rate'], 0)}%)"


def gain_cell(row: dict | None) -> str:
    if row is None or row["gain_captured"] is None:
        return "-"
    return f"{pct(row['gain_captured'], 0)}%{ci_text(row.get('gain_captured_ci'), 0)}"


def vs_random_cell(row: dict | None) -> str:
    """The policy's collab mIoU minus random's at the same target rate, with the paired interval."""
    delta = None if row is None else (row.get("vs") or {}).get("random")
    return "-" if delta is None else f"{100 * delta['collab_miou_delta']:+.1f}{ci_text(delta.get('ci'), signed=True)}"


def model_cell(sweep: dict, key: str) -> str:
    return f"{pct(sweep[key])}{ci_text(sweep.get(key + '_ci'))}"


def auc_table(sweeps: list[dict], policies: Sequence[str]) -> list[str]:
    """Mean collab mIoU over the swept target rates in 2-30% (trapezoid area / rate extent), per stream."""
    if not all("auc" in s for s in sweeps):
        return []
    rows = []
    for policy in policies:
        cells = []
        for s in sweeps:
            auc = s["auc"]["policies"].get(policy)
            delta = None if auc is None else (auc.get("vs") or {}).get("random")
            cells.append("-" if auc is None else f"{pct(auc['auc'])}{ci_text(auc.get('auc_ci'))}"
                         + ("" if delta is None else f"; {100 * delta['auc_delta']:+.1f}{ci_text(delta.get('ci'), signed=True)} vs random"))
        rows.append([policy, *cells])
    title = "mean collab mIoU % over target rates 2-30% (area under the curve / rate extent) [95% CI]; minus random's, pp [paired 95% CI]"
    return [f"**{title}**", "", *markdown_table(["policy", *(s["shift"] for s in sweeps)], rows), ""]


def sweep_table(sweeps: list[dict], policies: Sequence[str], cell: Callable[[dict | None], str], title: str) -> list[str]:
    """One table: a column per (shift, target rate), a row per policy, with device-only and cloud-only rows first."""
    rates = sweeps[0]["rates"]
    header = ["policy", *(f"{s['shift']} {int(100 * r)}%" for s in sweeps for r in rates)]
    rows = [["device only", *(model_cell(s, "device_miou") for s in sweeps for _ in rates)],
            ["cloud only", *(model_cell(s, "cloud_miou") for s in sweeps for _ in rates)]]
    for policy in policies:
        cells = []
        for s in sweeps:
            by_rate = {r["target_rate"]: r for r in s["rows"] if r["policy"] == policy}
            cells += [cell(by_rate.get(rate)) for rate in rates]
        rows.append([policy, *cells])
    return [f"**{title}**", "", *markdown_table(header, rows), ""]


def sweep_section(sweeps: list[dict], heading: str, policies: Sequence[str] = OFFLOADING_POLICIES) -> list[str]:
    """The three tables of one controller: collab mIoU, gain captured, and gain captured by the U variants."""
    variants = list(dict.fromkeys(r["policy"] for r in sweeps[0]["rows"] if r["policy"].startswith("acdc:")))
    frames = ", ".join(f"{s['shift']} {s['bootstrap']['frames']} frames" for s in sweeps if "bootstrap" in s)
    return [
        f"### {heading}", "", *([f"Streams: {frames}.", ""] if frames else []),
        *auc_table(sweeps, [*policies, *variants]),
        *sweep_table(sweeps, policies, collab_cell, "collab mIoU % [95% CI] (achieved upload rate)"),
        *sweep_table([s for s in sweeps], [p for p in policies if p != "random"], vs_random_cell, "collab mIoU minus random's at the same target rate, pp [paired 95% CI]"),
        *sweep_table(sweeps, policies, gain_cell, "gain captured = (collab - device) / (oracle - device) [95% CI]; oracle: greedy search at round(target x frames) uploads"),
        *sweep_table(sweeps, ["acdc", *variants], gain_cell, "ablation: gain captured by U variants"),
    ]


def cost_line(sweep: dict, rate: float = 0.1) -> str:
    """Per-frame cost of the stream's models and of each policy's scoring (at target `rate`)."""
    scoring = ", ".join(f"{r['policy']} {r['score_ms']:.2f}" for r in sweep["rows"] if r["target_rate"] == rate and ":" not in r["policy"])
    return (f"Cost per frame: device {sweep['device_ms']:.1f} ms / {sweep['device_gflops']:.2f} GFLOPs, cloud {sweep['cloud_ms']:.0f} ms / "
            f"{sweep['cloud_gflops']:.1f} GFLOPs ({sweep['threads']} thread); scoring (policy + controller) per frame, median ms: {scoring}")


def run_line(name: str, r: dict) -> str:
    """One single `collab` run through the DeviceRuntime, as a list item."""
    return (f"- `{name}`: {r['policy']} on {r['shift']}, codec {r['codec']}: collab {pct(r['collab_miou'])}{ci_text(r.get('collab_miou_ci'))} "
            f"(device {pct(r['device_miou'])}, cloud {pct(r['cloud_miou'])}, greedy oracle {pct(r['oracle_miou'])}), gain captured {gain_cell(r)}, upload rate {pct(r['upload_rate'])}% "
            f"(target {pct(r['target_rate'])}%), {r['bytes_up_per_frame'] / 1e3:.1f} kB up/frame "
            f"({(r['bytes_up_per_upload'] or 0) / 1e3:.0f} kB per upload), device {r['device_ms']:.1f} ms + scoring {r['score_ms']:.2f} ms "
            f"({100 * (r['score_overhead'] or 0):.1f}%)")


def offloading_tables(folder: Path) -> str:
    """docs/results/offloading/<kind>/tables.md: sweeps per controller, model and scoring cost, single runs."""
    folder = Path(folder)
    lines: list[str] = []
    sections = (("sweep", "causal window controller"), ("hindsight", "per-stream top-k threshold (not causal)"))
    for prefix, heading in sections:
        sweeps = load_sweeps(folder, prefix)
        if sweeps:
            lines += sweep_section(sweeps, heading)
    first = load_sweeps(folder, "sweep") or load_sweeps(folder, "hindsight")
    if first:
        lines += [cost_line(first[0]), ""]
    lines += [run_line(path.name, read_json(path)) for path in sorted(folder.glob("run-*.json"))]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- service (scripts/service_results.sh)


def dcam_section(folder: Path, rates: Sequence[str] = SERVICE_RATES) -> list[str]:
    """DCAM through the server against the same stream without U adaptation, with the in-process runs beside."""
    header = ["upload target", "achieved (no DCAM / DCAM)", "device-only", "collab, no U adaptation", "collab, DCAM", "delta",
              "U updates applied", "fallbacks", "in-process collab (no DCAM / DCAM)"]
    rows = []
    for rate in rates:
        a, b = load_json(folder, f"device-acdc-r{rate}-no-dcam.json"), load_json(folder, f"device-acdc-r{rate}-dcam.json")
        ca, cb = load_json(folder, f"collab-acdc-r{rate}-no-dcam.json"), load_json(folder, f"collab-acdc-r{rate}-dcam.json")
        if not (a and b):
            continue
        in_process = f"{pct(ca['collab_miou'], 2) if ca else '-'} / {pct(cb['collab_miou'], 2) if cb else '-'}"
        rows.append([f"{100 * float(rate):.0f}%", f"{pct(a['upload_rate'], 2)}% / {pct(b['upload_rate'], 2)}%", pct(a["device_miou"], 2),
                     pct(a["collab_miou"], 2), pct(b["collab_miou"], 2), f"{100 * (b['collab_miou'] - a['collab_miou']):+.2f}",
                     str(b["u_updates_applied"]), f"{a['fallbacks']} / {b['fallbacks']}", in_process])
    return ["## DCAM through the server (CamVid val, shift stream)", "", *markdown_table(header, rows), ""]


def serving_section(peak: dict, half: dict | None) -> list[str]:
    """Throughput and latency of the service at peak and at half of it, against the raw batched forward."""
    raw = peak.get("raw_batched") or {}
    rows = []
    if raw:
        fps = ", ".join(f"{v:.3f}" for v in raw["fps"])
        rows.append([f"raw batched forward (batch {raw['batch']}, {raw['threads']} threads; each measurement: {fps})",
                     f"{peak['raw_fps']:.3f}", "-", "-", "-", "-"])
    for name, r in (("service, closed loop (peak)", peak), ("service, open loop at half of peak", half)):
        if r:
            rows.append([f"{name}, {r['devices']} devices", f"{r['throughput_fps']:.3f}", f"{r['latency_ms_p50']:.0f}",
                         f"{r['latency_ms_p95']:.0f}", f"{r['latency_ms_p99']:.0f}", str(r["errors"] or 0)])
    lines = ["## Serving efficiency", "", *markdown_table(["run", "frames/s", "p50 ms", "p95 ms", "p99 ms", "errors"], rows), ""]
    if raw:
        lines += efficiency_lines(peak, raw)
    if half:
        lines.append(f"p99 / p50 at half of peak = {half['latency_ms_p99'] / half['latency_ms_p50']:.2f}")
    return [*lines, ""]


def efficiency_lines(peak: dict, raw: dict) -> list[str]:
    """Service over raw, per round: frames/s and CPU seconds per frame; and against ideal two-core scaling."""
    per_round = ", ".join(f"{r['throughput_fps']:.3f} fps / {r['raw_fps']:.3f} = {r['efficiency_vs_raw']:.3f}" for r in peak["rounds"])
    lines = [f"service / raw = {peak['efficiency_vs_raw']:.3f} (median over rounds: {per_round})"]
    if peak.get("cpu_efficiency_vs_raw") is not None:
        per_cpu = ", ".join(f"{r['raw_cpu_s_per_frame']:.3f} / {r['server_cpu_s_per_frame']:.3f} CPU s" for r in peak["rounds"])
        lines.append(f"\nCPU seconds per frame, raw / service = {peak['cpu_efficiency_vs_raw']:.3f} (median over rounds: {per_cpu})")
    if raw.get("threads") == 1:
        ideal = 2 * peak["raw_fps"]
        lines.append(f"\nservice / ideal two-core raw (2 x the 1-thread raw forward) = {peak['throughput_fps'] / ideal:.3f} "
                     f"({peak['throughput_fps']:.3f} fps / {ideal:.3f})")
    return lines


def payload_section(pb: dict) -> list[str]:
    """Encoded bytes per frame for each codec, and the DCAM side payloads."""
    rows = [[codec, f"{v['bytes_mean']:.0f}", f"{v['ratio']:.1f}x"] for codec, v in pb["codecs"].items()]
    return ["## Payload bytes per frame", "", f"uncompressed frame: {pb['uncompressed_bytes']:.0f} bytes ({pb['frame']})", "",
            *markdown_table(["codec", "bytes/frame", "ratio"], rows),
            "", f"device probabilities for DCAM: {pb['device_probs_bytes_mean']:.0f} bytes (zlib of {pb['device_probs_uncompressed']} uint8, "
            f"shape {pb['device_probs_shape']}); label map PNG: {pb['label_png_bytes_mean']:.0f} bytes; U: {pb['u_float32_bytes']} bytes", ""]


def service_tables(folder: Path) -> str:
    """docs/results/service/tables.md from whatever of the service results exists in `folder`."""
    folder = Path(folder)
    lines = dcam_section(folder)
    peak = load_json(folder, "loadtest-peak.json")
    if peak:
        lines += serving_section(peak, load_json(folder, "loadtest-half.json"))
    payload = load_json(folder, "payload-bytes.json")
    if payload:
        lines += payload_section(payload)
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- feature codec (scripts/codec_results.sh)

IMAGE_METHODS = ("png", "jpeg", "webp", "avif")


def rd_table(points: Sequence[dict]) -> list[str]:
    """Every RD point, grouped by method and sorted by rate."""
    rows = [[p["method"], p["setting"], f"{p['bytes_per_frame']:.0f}", f"{p['bpp']:.4f}", pct(p["miou"])]
            for p in sorted(points, key=lambda p: (p["method"], p["bpp"]))]
    return markdown_table(["method", "setting", "bytes / frame", "bpp", "mIoU %"], rows, ["---", "---", "---:", "---:", "---:"])


def jd_target_lines(points: Sequence[dict]) -> list[str]:
    """The issue's target: some JD point within 1 pp of no compression using at most 1/5 of the bytes of the cheapest
    image codec (into the cloud model) that reaches the same mIoU. Reports the best JD point for it either way."""
    ref = next((p for p in points if p["method"] == "no-compression"), None)
    jd = [p for p in points if p["method"] == "jd"]
    if ref is None or not jd:
        return ["(needs a no-compression point and at least one JD point)"]
    lines = []
    for p in sorted(jd, key=lambda p: p["bpp"]):
        image = min((q for q in points if q["method"] in IMAGE_METHODS and q["miou"] >= p["miou"]), key=lambda q: q["bytes_per_frame"], default=None)
        ratio = (p["bytes_per_frame"] / image["bytes_per_frame"]) if image else None
        near = ref["miou"] - p["miou"] <= 0.01
        met = near and ratio is not None and ratio <= 0.2
        lines.append(f"- JD {p['setting']}: {pct(p['miou'])}% ({100 * (p['miou'] - ref['miou']):+.1f} pp vs no compression), "
                     f"{p['bytes_per_frame']:.0f} B; cheapest image codec at that mIoU: "
                     + (f"{image['setting']} {image['bytes_per_frame']:.0f} B (JD uses {100 * ratio:.1f}% of it)" if image else "none reaches it")
                     + (" -> **target met**" if met else ""))
    return lines


def cloud_side_table(points: Sequence[dict], references: dict) -> list[str]:
    """JD Table 2: parameters and GFLOPs on the cloud side per frame, JD vs SD+D vs the cloud segmenter."""
    rows = []
    for method in ("jd", "sd+d", "no-compression"):
        p = next((q for q in points if q["method"] == method), None)
        if p is not None and "cloud_parameters" in p:
            rows.append([method, f"{p['cloud_parameters'] / 1e6:.3f}", f"{p['cloud_gflops']:.2f}"])
    if references.get("cloud_parameters"):
        gflops = references.get("cloud_gflops")
        rows.append(["cloud segmenter (on the decoded image)", f"{references['cloud_parameters'] / 1e6:.3f}", "-" if gflops is None else f"{gflops:.2f}"])
    jd = next((q for q in points if q["method"] == "jd" and "cloud_parameters" in q), None)
    sdd = next((q for q in points if q["method"] == "sd+d" and "cloud_parameters" in q), None)
    lines = markdown_table(["cloud side", "parameters (M)", "GFLOPs / frame"], rows, ["---", "---:", "---:"])
    if jd and sdd:
        lines += ["", f"JD has {100 * jd['cloud_parameters'] / sdd['cloud_parameters']:.1f}% of SD+D's cloud-side parameters (target <= 12%)."]
    return lines


def k_table(points: Sequence[dict]) -> list[str]:
    """JD Fig. 8: the over-parameterisation K at one lambda (training-time branches; the deployed decoder is the same)."""
    rows = [[p["setting"], f"{p['bytes_per_frame']:.0f}", pct(p["miou"])] for p in sorted(points, key=lambda p: p["setting"])]
    return markdown_table(["JD setting", "bytes / frame", "mIoU %"], rows, ["---", "---:", "---:"])


def codec_tables(folder: Path) -> str:
    """docs/results/codec/tables.md from rd.json (Fig. 5, Table 2), rd-k.json (Fig. 8) and bench.json."""
    folder = Path(folder)
    lines: list[str] = []
    rd = load_json(folder, "rd.json")
    if rd:
        lines += [f"## Rate vs mIoU on {rd['data']} {rd['split']} ({rd['frames']} frames), real bytes", "",
                  f"cloud on the original frames {pct(rd['references']['cloud_original_miou'])}%, device alone "
                  f"{pct(rd['references']['device_miou'])}%; bpp = {rd['bpp']}", "", *rd_table(rd["points"]), "",
                  "### The JD target", "", *jd_target_lines(rd["points"]), "",
                  "### Cloud-side cost (Table 2)", "", *cloud_side_table(rd["points"], rd["references"]), ""]
    k = load_json(folder, "rd-k.json")
    if k:
        lines += ["## Over-parameterisation K (Fig. 8)", "", *k_table([p for p in k["points"] if p["method"] == "jd"]), ""]
    bench = load_json(folder, "bench.json")
    if bench:
        lines += ["## Latency (`tandemseg bench codec`)", "",
                  *markdown_table(["step", "ms (median)"], [[key.removesuffix("_ms"), f"{bench[key]:.1f}"] for key in
                                  ("device_ms", "device_with_encode_ms", "cloud_ms", "cloud_decode_ms")], ["---", "---:"]),
                  "", f"encode adds {pct(bench['encode_overhead'])}% to the device model (target <= 15%); feature decoding takes "
                  f"{pct(bench['decode_share_of_cloud'])}% of the cloud model's time (target <= 25%); {bench['threads']} thread(s), "
                  f"load average {bench['load_avg_1min']:.1f}.", ""]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- multi-exit (scripts/exits_results.sh)


def search_row(name: str, search: dict) -> list[str]:
    best, ref = search["best"], search["reference"]
    cfg = best["config"]
    exits = ", ".join(f"{k} (th {t:g}, pix {p:g})" for k, t, p in zip(cfg["exits"], cfg["thresholds"], cfg["pixel_thresholds"], strict=False)) or "-"
    return [name, cfg["setting"], exits, pct(best["miou"]), pct(best["miou"] - ref["miou"], 2),
            f"{best['costs']['gflops']:.3f} / {ref['costs']['gflops']:.3f}", f"{best['costs']['latency_ms']:.1f} / {ref['costs']['latency_ms']:.1f}"]


BUDGETS = (0.25, 0.4, 0.5, 0.67, 0.8, 0.9, 1.0)  # fractions of the final exit's GFLOPs
# training runs whose cards travel with the results (scripts/exits_results.sh): Table 5's stage-1 variants and the
# single-exit control, the frozen-backbone heads, Table 6's stage-2 losses
DEVICE_RUNS = ("stage1-final", "stage1", "stage1-all", "stage2-frozen", "stage2-pfd", "stage2-ce")
CLOUD_RUNS = ("cloud-stage2",)


def budget_picks(front: Sequence[dict], final_gflops: float, budgets: Sequence[float] = BUDGETS) -> list[tuple[float, dict]]:
    """For each budget, the front's most accurate configuration within it (budgets nothing fits are left out)."""
    out = []
    for f in budgets:
        fits = [e for e in front if e["costs"]["gflops"] <= f * final_gflops + 1e-12]
        if fits:
            out.append((f, max(fits, key=lambda e: e["miou"])))
    return out


def pareto_row(e: dict, reference_miou: float) -> list[str]:
    cfg = e["config"]
    exits = ", ".join(f"{k} ({t:g}/{p:g})" for k, t, p in zip(cfg["exits"], cfg["thresholds"], cfg["pixel_thresholds"], strict=False)) or cfg["setting"]
    early = sum(v for k, v in e["exit_share"].items() if k != "final")
    return [pct(e["miou"]), pct(e["miou"] - reference_miou, 2), f"{e['costs']['gflops']:.3f}", f"{e['costs']['latency_ms']:.1f}", exits, f"{100 * early:.0f}%"]


def exit_eval_row(shift: str, e: dict) -> list[str]:
    hist = ", ".join(f"{k}: {v}" for k, v in e["exit_histogram"].items())
    return [shift, pct(e["miou"]), pct(e["final_exit_miou"]), pct(e["miou"] - e["final_exit_miou"], 2),
            f"{e['gflops_per_frame']:.3f} / {e['final_gflops_per_frame']:.3f} ({e['final_gflops_per_frame'] / e['gflops_per_frame']:.2f}x)",
            f"{e['latency_ms']:.1f} / {e['final_latency_ms']:.1f} ({e['final_latency_ms'] / e['latency_ms']:.2f}x)", hist]


def exit_miou_table(cards: dict[str, dict]) -> list[str]:
    """Per-exit val mIoU after each training run (Tables 5 and 6)."""
    keys = list(dict.fromkeys(k for c in cards.values() for k in c["metrics"]["val_exit_miou"]))
    rows = [[k, *(pct(c["metrics"]["val_exit_miou"].get(k)) for c in cards.values())] for k in keys]
    return markdown_table(["exit", *cards], rows, ["---", *["---:"] * len(cards)])


def exits_tables(folder: Path) -> str:
    """docs/results/exits/tables.md: searched configurations (Table 2), val evaluation per shift, per-exit mIoU per run."""
    folder = Path(folder)
    lines: list[str] = []
    searches = [(f.stem.removeprefix("search-"), read_json(f)) for f in sorted(folder.glob("search-*.json"))]
    if searches:
        lines += ["## Configurations searched on train frames (Table 2)", "",
                  *markdown_table(["constraint", "setting", "early exits (thresholds)", "mIoU %", "vs final (pp)", "GFLOPs MESS / final", "ms MESS / final"],
                                  [search_row(n, s) for n, s in searches]), ""]
    with_front = [(n, srch) for n, srch in searches if srch.get("pareto")]
    if with_front:
        name, front_of = with_front[-1]
        final = front_of["reference"]["costs"]["gflops"]
        picks = budget_picks(front_of["pareto"], final)
        lines += [f"## Best of the Pareto front under a GFLOPs budget, calibration frames (search-{name}.json)", "",
                  *markdown_table(["budget (x final GFLOPs)", "mIoU %", "vs final (pp)", "GFLOPs", "ms", "exits (th_img/th_pix)", "answered early"],
                                  [[f"{f:g}", *pareto_row(e, front_of["reference"]["miou"])] for f, e in picks]), ""]
    evals = [(f.stem.removeprefix("eval-"), read_json(f)) for f in sorted(folder.glob("eval-*.json"))]
    if evals:
        lines += ["## On val frames, timed against the final exit in the same run", "",
                  *markdown_table(["run", "MESS mIoU %", "final exit %", "delta (pp)", "GFLOPs / frame (saving)", "median ms (speed-up)", "exits taken"],
                                  [exit_eval_row(n, e) for n, e in evals]), ""]
    for title, names in (("the device", DEVICE_RUNS), ("the cloud model", CLOUD_RUNS)):
        cards = {name: load_json(folder, f"{name}-card.json") for name in names}
        cards = {k: v for k, v in cards.items() if v}
        if cards:
            lines += [f"## Val mIoU of every exit after each training run of {title} (Tables 5 and 6)", "", *exit_miou_table(cards), ""]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- adaptation (scripts/adaptation_results.sh)

ADAPT_ORDER = ("none", "bn", "tent", "upload-all", "cema")


def load_adaptation_runs(folder: Path, severity: str) -> list[tuple[dict, np.ndarray, np.ndarray]]:
    """(result, per-frame confusion matrices, source frame ids) of every method run at `severity`, in ADAPT_ORDER."""
    runs = []
    for method in ADAPT_ORDER:
        result = load_json(folder, f"sev{severity}-{method}.json")
        if result is None:
            continue
        with np.load(Path(folder) / result["frame_cms_file"]) as z:
            runs.append((result, z["cms"], z["source"]))
    return runs


def adaptation_section(runs: list[tuple[dict, np.ndarray, np.ndarray]], severity: str) -> list[str]:
    """Online device mIoU with paired bootstrap intervals (source frames resampled), differences to CEMA, costs."""
    groups = runs[0][2]
    draws = Resamples.draw(groups)
    samples = {r["method"]: draws.miou(cms) for r, cms, _ in runs}
    cema = next((r for r, _, _ in runs if r["method"] == "cema"), None)
    rows = []
    for r, _, _ in runs:
        m = r["method"]
        diff = "-" if cema is None or m == "cema" else \
            f"{100 * (r['device_miou'] - cema['device_miou']):+.1f} {ci_text(draws.ci(samples[m] - samples['cema']), signed=True)}"
        rows.append([m, f"{pct(r['device_miou'])} {ci_text(draws.ci(samples[m]))}", diff, pct(r["final_device_miou"]),
                     f"{r['uploads']} ({pct(r['upload_rate'])}%)", f"{r['bytes_up'] / 1e6:.1f}", f"{r['bytes_down'] / 1e6:.2f}",
                     str(r["updates_applied"]), f"{r['device_ms_median']:.1f}"])
    frames = runs[0][0]["frames"]
    lines = [f"## Severity {severity}: {frames} frames ({runs[0][0]['stream']}, {len(np.unique(groups))} val frames under each condition)", "",
             *markdown_table(["method", "online device mIoU % [95% CI]", "method - CEMA (pp) [95% CI]", "final device mIoU %", "uploads",
                              "MB up", "MB down", "updates applied", "device ms (median)"], rows), "",
             "Intervals: paired percentile bootstrap over the val frames (each drawn with its copies under every corruption), "
             f"{draws.count} resamples; the decisions of each run are held fixed.", ""]
    conditions = list(runs[0][0]["per_condition"])
    short = [c.split(":")[0].replace("_", " ") for c in conditions]
    per = [[r["method"], *(pct(r["per_condition"].get(c)) for c in conditions), pct(float(np.mean(list(r["per_condition"].values()))))] for r, _, _ in runs]
    lines += [f"### Online device mIoU % per corruption, severity {severity} (CEMA's comparison table)", "",
              *markdown_table(["method", *short, "avg"], per), ""]
    return lines


def adaptation_tables(folder: Path) -> str:
    """docs/results/adaptation/tables.md (and one curve PNG per severity)."""
    folder = Path(folder)
    severities = sorted({f.name.split("-")[0].removeprefix("sev") for f in folder.glob("sev*-*.json")})
    lines: list[str] = []
    for sev in severities:
        runs = load_adaptation_runs(folder, sev)
        if not runs:
            continue
        lines += adaptation_section(runs, sev)
        plot_adaptation([r for r, _, _ in runs], folder / f"curve-sev{sev}.png", f"online device mIoU over the continual stream, severity {sev}")
        lines += [f"![online mIoU, severity {sev}](curve-sev{sev}.png)", ""]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- one value for a script


def json_field(path: Path, key: str) -> float | int | str | bool | None:
    """The value at a dotted `key` ('a.b.0') of a JSON results file; KeyError naming what is missing."""
    value = read_json(path)
    for part in key.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise KeyError(f"{path} has no {key!r} (stopped at {part!r})")
    return value
