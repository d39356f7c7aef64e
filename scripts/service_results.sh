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
  half=$($TS report field "$OUT/loadtest-peak.json" throughput_fps --times 0.5)
  # half of peak, open loop: frames are sent on schedule whatever the replies do
  $TS loadtest --server "http://127.0.0.1:$PORT" --devices "$K" --frames "${HALF_FRAMES:-8}" --rate "$half" --max-seconds 240 --json "$OUT/loadtest-half.json"
  curl -s "http://127.0.0.1:$PORT/metrics" > "$OUT/metrics-after-loadtest.txt"
  stop_server
}

bytes() {  # uncompressed vs encoded bytes per frame for each codec (first 20 val frames), plus DCAM's side payloads
  $TS bench payload --data "$DATA" --split val --device-ckpt "$DEV" --frames 20 --json "$OUT/payload-bytes.json"
}

tables() {  # docs/results/service/tables.md from the JSON above (whatever of it exists)
  $TS report service "$OUT"
}

case "${1:-all}" in
  dcam) dcam; tables ;;
  serving) serving; tables ;;
  bytes) bytes; tables ;;
  tables) tables ;;
  all) bytes; dcam; serving; tables ;;
  *) echo "usage: $0 [dcam|serving|bytes|tables|all]" >&2; exit 2 ;;
esac
