#!/usr/bin/env bash
# Reproduces docs/results/service.md: DCAM through the real server (the analogue of ACDC Table 3),
# serving efficiency vs the raw batched model, and payload bytes per codec.
#
#   scripts/service_results.sh [dcam|serving|bytes|all]      (default: all)
#
# Needs checkpoints/camvid-{device,cloud} and the CamVid copy in ../shared/data/camvid. Everything runs on
# 127.0.0.1; servers are started here and stopped at the end. JSON lands in docs/results/service/.
set -euo pipefail
cd "$(dirname "$0")/.."

TS=${TS:-.venv/bin/tandemseg}
DATA=${DATA:-camvid:../shared/data/camvid}
DEV=${DEV:-checkpoints/camvid-device}
CLOUD=${CLOUD:-checkpoints/camvid-cloud}
OUT=${OUT:-docs/results/service}
RUNS=${RUNS:-runs/service}
THREADS=${THREADS:-2}
# the mixed shift stream of docs/results/offloading.md (conditions switch every 10 frames) over CamVid val (101 frames)
STREAM=${STREAM:-stream:mixed/10}
# U of the offloading results (scripts/offloading_results.sh); when it is missing, fitted the same way into runs/
U=${U:-checkpoints/camvid-uncertainty.safetensors}
[ -f "$U" ] || U=$RUNS/u-camvid.safetensors
CALIB=clean,shot_noise:3,impulse_noise:3,zoom_blur:3,brightness:3,pixelate:3,elastic_transform:3
ALPHA=${ALPHA:-0.1}
PORT=${PORT:-18080}
export TANDEMSEG_TOKENS="cam1:results-token-cam1,cam2:results-token-cam2,cam3:results-token-cam3,cam4:results-token-cam4,cam5:results-token-cam5,cam6:results-token-cam6,cam7:results-token-cam7,cam8:results-token-cam8"
mkdir -p "$OUT" "$RUNS"
SERVER_PID=""

start_server() {  # start_server ARGS...: `tandemseg serve` in the background, wait for /v1/health
  $TS serve --cloud-ckpt "$CLOUD" --port "$PORT" --threads "$THREADS" "$@" > "$RUNS/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$PORT/v1/health" > /dev/null && return 0
    kill -0 "$SERVER_PID" 2> /dev/null || { cat "$RUNS/server.log"; return 1; }
    sleep 1
  done
  echo "server did not come up" >&2
  return 1
}

stop_server() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2> /dev/null || true; wait "$SERVER_PID" 2> /dev/null || true; SERVER_PID=""; fi
}
trap stop_server EXIT

dcam() {
  # U fitted on the training split under calibration conditions that are not evaluation conditions.
  [ -f "$U" ] || $TS fit-uncertainty --ckpt "$DEV" --data "$DATA" --split train --shifts "$CALIB" --passes 2 --lambda 0.5 \
    --out "$U" --threads 1 --cache-dir runs/offloading-cache --json "$OUT/u-fit.json"
  start_server --uncertainty "$U" --dcam-alpha "$ALPHA" --max-batch 4
  for rate in 0.05 0.1 0.2; do
    for mode in dcam no-dcam; do
      # --max-lag 0: each frame waits for its reply before the next (as `collab`), so U updates land in
      # the same order and the networked run is directly comparable with the in-process one.
      TANDEMSEG_TOKEN=results-token-cam1 $TS device --server "http://127.0.0.1:$PORT" --data "$DATA" --split val --shift "$STREAM" \
        --device-ckpt "$DEV" --uncertainty "$U" --policy acdc --rate "$rate" --"$mode" --max-lag 0 --deadline-ms 120000 \
        --timeout-s 60 --threads 1 --json "$OUT/device-acdc-r${rate}-${mode}.json"
    done
  done
  # the same stream in-process (collab), with and without DCAM, for the agreement column
  for rate in 0.05 0.1 0.2; do
    $TS collab --data "$DATA" --split val --shift "$STREAM" --device-ckpt "$DEV" --cloud-ckpt "$CLOUD" --uncertainty "$U" \
      --policy acdc --rate "$rate" --dcam-alpha "$ALPHA" --threads 1 --cache-dir runs/offloading-cache --json "$OUT/collab-acdc-r${rate}-dcam.json"
    $TS collab --data "$DATA" --split val --shift "$STREAM" --device-ckpt "$DEV" --cloud-ckpt "$CLOUD" --uncertainty "$U" \
      --policy acdc --rate "$rate" --dcam-alpha 0 --threads 1 --cache-dir runs/offloading-cache --json "$OUT/collab-acdc-r${rate}-no-dcam.json"
  done
  stop_server
  # ablation: a larger DCAM weight
  for alpha in ${ALPHA_ABLATION:-0.5}; do
    start_server --uncertainty "$U" --dcam-alpha "$alpha" --max-batch 4
    for rate in 0.05 0.1 0.2; do
      TANDEMSEG_TOKEN=results-token-cam1 $TS device --server "http://127.0.0.1:$PORT" --data "$DATA" --split val --shift "$STREAM" \
        --device-ckpt "$DEV" --uncertainty "$U" --policy acdc --rate "$rate" --dcam --max-lag 0 --deadline-ms 120000 \
        --timeout-s 60 --threads 1 --json "$OUT/device-acdc-r${rate}-dcam-a${alpha}.json"
    done
    stop_server
  done
}

serving() {
  K=${K:-8}  # twice the batch: one batch forms while the other computes, so the server never idles at peak
  B=${B:-4}
  FRAMES=${FRAMES:-6}
  # One torch thread per forward and two batches in flight: on 2 cores this beats one 2-thread forward
  # (OpenMP's per-op barriers stall whenever the other core is busy, e.g. with HTTP work or the clients).
  THREADS=${SERVE_THREADS:-1} start_server --uncertainty "$U" --dcam-alpha "$ALPHA" --max-batch "$B" --max-wait-ms 20 \
    --pipeline "${PIPELINE:-2}" --warmup 360x480
  # peak: K devices in closed loop; the raw batched forward of the same checkpoint is timed in the same run,
  # on one thread: the service's two 1-thread pipelines are then compared with twice that (ideal two-core scaling)
  $TS loadtest --server "http://127.0.0.1:$PORT" --devices "$K" --frames "$FRAMES" --raw-ckpt "$CLOUD" --raw-batch "$B" \
    --raw-batches 3 --rounds "${ROUNDS:-3}" --threads "${RAW_THREADS:-1}" --json "$OUT/loadtest-peak.json"
  half=$(.venv/bin/python -c "import json; print(json.load(open('$OUT/loadtest-peak.json'))['throughput_fps'] / 2)")
  # half of peak, open loop: frames are sent on schedule whatever the replies do
  $TS loadtest --server "http://127.0.0.1:$PORT" --devices "$K" --frames "${HALF_FRAMES:-8}" --rate "$half" --max-seconds 240 --json "$OUT/loadtest-half.json"
  curl -s "http://127.0.0.1:$PORT/metrics" > "$OUT/metrics-after-loadtest.txt"
  stop_server
}

bytes() {
  .venv/bin/python - "$DATA" "$DEV" "$OUT/payload-bytes.json" <<'EOF'
"""Uncompressed vs encoded bytes per frame for each codec on CamVid val (first 20 frames), plus the DCAM side payloads."""
import json, sys
import numpy as np
from tandemseg.data.spec import open_dataset
from tandemseg.device.runtime import run_device
from tandemseg.models.checkpoint import load_checkpoint
from tandemseg.wire.payload import encode_frame, encode_label_png, pack_probs

data, dev, out = sys.argv[1:4]
ds = open_dataset(data, "val")
model = load_checkpoint(dev).model
codecs = ["png", "webp:100", "webp:90", "webp:75", "jpeg:95", "jpeg:90", "jpeg:75", "jpeg:50"]
rows = {c: [] for c in codecs}
probs, labels, raw = [], [], []
for i in range(min(20, len(ds))):
    s = ds[i]
    raw.append(s.image.nbytes)
    for c in codecs:
        rows[c].append(len(encode_frame(s.image, c)))
    o = run_device(model, s.image)
    probs.append(len(pack_probs(o.probs.numpy())[0]))
    labels.append(len(encode_label_png(o.pred)))
result = {
    "frames": len(raw), "frame": list(ds[0].image.shape), "uncompressed_bytes": float(np.mean(raw)),
    "codecs": {c: {"bytes_mean": float(np.mean(v)), "ratio": float(np.mean(raw) / np.mean(v))} for c, v in rows.items()},
    "device_probs_bytes_mean": float(np.mean(probs)), "device_probs_uncompressed": int(np.prod(o.probs.shape)),
    "device_probs_shape": list(o.probs.shape), "label_png_bytes_mean": float(np.mean(labels)),
    "u_float32_bytes": 4 * o.probs.shape[0] ** 2,
}
json.dump(result, open(out, "w"), indent=2)
print(json.dumps(result, indent=2))
EOF
}

tables() {  # docs/results/service/tables.md from the JSON above (whatever of it exists)
  .venv/bin/python - "$OUT" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
def load(name):
    f = out / name
    return json.loads(f.read_text()) if f.is_file() else None
def pct(v): return "-" if v is None else f"{100 * v:.2f}"
lines = ["## DCAM through the server (CamVid val, shift stream)", "",
         "| upload target | achieved (no DCAM / DCAM) | device-only | collab, no U adaptation | collab, DCAM | delta | U updates applied | fallbacks | in-process collab (no DCAM / DCAM) |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
for rate in ("0.05", "0.1", "0.2"):
    a, b = load(f"device-acdc-r{rate}-no-dcam.json"), load(f"device-acdc-r{rate}-dcam.json")
    ca, cb = load(f"collab-acdc-r{rate}-no-dcam.json"), load(f"collab-acdc-r{rate}-dcam.json")
    if not (a and b):
        continue
    delta = 100 * (b["collab_miou"] - a["collab_miou"])
    lines.append(f"| {100 * float(rate):.0f}% | {pct(a['upload_rate'])}% / {pct(b['upload_rate'])}% | {pct(a['device_miou'])} | {pct(a['collab_miou'])} | "
                 f"{pct(b['collab_miou'])} | {delta:+.2f} | {b['u_updates_applied']} | {a['fallbacks']} / {b['fallbacks']} | "
                 f"{pct(ca['collab_miou']) if ca else '-'} / {pct(cb['collab_miou']) if cb else '-'} |")
lines.append("")
peak, half = load("loadtest-peak.json"), load("loadtest-half.json")
if peak:
    raw = peak.get("raw_batched") or {}
    lines += ["## Serving efficiency", "", "| run | frames/s | p50 ms | p95 ms | p99 ms | errors |", "| --- | --- | --- | --- | --- | --- |"]
    if raw:
        fps = ", ".join(f"{v:.3f}" for v in raw["fps"])
        lines.append(f"| raw batched forward (batch {raw['batch']}, {raw['threads']} threads; each measurement: {fps}) | "
                     f"{peak['raw_fps']:.3f} | - | - | - | - |")
    for name, r in (("service, closed loop (peak)", peak), ("service, open loop at half of peak", half)):
        if r:
            lines.append(f"| {name}, {r['devices']} devices | {r['throughput_fps']:.3f} | {r['latency_ms_p50']:.0f} | "
                         f"{r['latency_ms_p95']:.0f} | {r['latency_ms_p99']:.0f} | {r['errors'] or 0} |")
    lines.append("")
    if raw:
        per_round = ", ".join(f"{r['throughput_fps']:.3f} fps / {r['raw_fps']:.3f} = {r['efficiency_vs_raw']:.3f}" for r in peak["rounds"])
        lines.append(f"service / raw = {peak['efficiency_vs_raw']:.3f} (median over rounds: {per_round})")
        if peak.get("cpu_efficiency_vs_raw") is not None:
            per_cpu = ", ".join(f"{r['raw_cpu_s_per_frame']:.3f} / {r['server_cpu_s_per_frame']:.3f} CPU s" for r in peak["rounds"])
            lines.append(f"\nCPU seconds per frame, raw / service = {peak['cpu_efficiency_vs_raw']:.3f} (median over rounds: {per_cpu})")
        if raw.get("threads") == 1:
            ideal = 2 * peak["raw_fps"]
            lines.append(f"\nservice / ideal two-core raw (2 x the 1-thread raw forward) = {peak['throughput_fps'] / ideal:.3f} "
                         f"({peak['throughput_fps']:.3f} fps / {ideal:.3f})")
    if half:
        lines.append(f"p99 / p50 at half of peak = {half['latency_ms_p99'] / half['latency_ms_p50']:.2f}")
    lines.append("")
pb = load("payload-bytes.json")
if pb:
    lines += ["## Payload bytes per frame", "", f"uncompressed frame: {pb['uncompressed_bytes']:.0f} bytes ({pb['frame']})", "",
              "| codec | bytes/frame | ratio |", "| --- | --- | --- |"]
    lines += [f"| {c} | {v['bytes_mean']:.0f} | {v['ratio']:.1f}x |" for c, v in pb["codecs"].items()]
    lines += ["", f"device probabilities for DCAM: {pb['device_probs_bytes_mean']:.0f} bytes (zlib of {pb['device_probs_uncompressed']} uint8, "
              f"shape {pb['device_probs_shape']}); label map PNG: {pb['label_png_bytes_mean']:.0f} bytes; U: {pb['u_float32_bytes']} bytes", ""]
(out / "tables.md").write_text("\n".join(lines) + "\n")
print((out / "tables.md").read_text())
PY
}

case "${1:-all}" in
  dcam) dcam; tables ;;
  serving) serving; tables ;;
  bytes) bytes; tables ;;
  tables) tables ;;
  all) bytes; dcam; serving; tables ;;
  *) echo "usage: $0 [dcam|serving|bytes|tables|all]" >&2; exit 2 ;;
esac
