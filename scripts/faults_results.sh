#!/usr/bin/env bash
# Fault injection behind docs/results/reliability.md: the server is killed (SIGKILL) and restarted KILLS times
# while a device streams 300 frames to it over loopback (acdc policy, DCAM on). Every frame must still get a final
# map; uploads must resume after every restart; the restarted cloud must continue DCAM from the device's U.
#
#   scripts/faults_results.sh
set -euo pipefail
cd "$(dirname "$0")/.."

T=".venv/bin/tandemseg"
PORT=${PORT:-18732}
KILLS=${KILLS:-10}
FPS=${FPS:-2.5}   # 300 frames last 120 s: ten kill-restart cycles of about 12 s fit
UP=${UP:-6}       # seconds the server stays up after each restart
OUT=docs/results/reliability
mkdir -p "$OUT"
TOKENS=$(mktemp)
printf 'dev1:fault-token-one-1111\n' > "$TOKENS"
serve() {
  $T serve --cloud-ckpt checkpoints/synthetic-cloud --tokens "$TOKENS" --port "$PORT" --threads 1 >> "$OUT/faults-server.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 60); do curl -sf "http://127.0.0.1:$PORT/v1/health" > /dev/null && return; sleep 0.2; done
}
: > "$OUT/faults-server.log"
serve
trap 'kill $SERVER 2>/dev/null; rm -f "$TOKENS"' EXIT
$T device --server "http://127.0.0.1:$PORT" --token fault-token-one-1111 --data synthetic --split train --limit 300 --pace --fps "$FPS" \
  --device-ckpt checkpoints/synthetic-device --policy acdc --uncertainty checkpoints/synthetic-uncertainty.safetensors --rate 0.3 --deadline-ms 3000 --timeout-s 2 --retries 1 --threads 1 \
  --json "$OUT/faults-device.json" > "$OUT/faults-device.log" 2>&1 &
DEVICE=$!
# the device has connected (whoami, U) once the server has counted its first upload
for _ in $(seq 120); do
  curl -s "http://127.0.0.1:$PORT/metrics" | grep -q 'tandemseg_requests_total{endpoint="/v1/segment"' && break
  sleep 0.5
done
KILLED=0
for _ in $(seq "$KILLS"); do
  kill -9 "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  KILLED=$((KILLED + 1))
  sleep 1
  serve
  sleep "$UP"
done
wait "$DEVICE"
# the cloud's view of the device's U after the last restart (the device re-announces its U to a cloud behind it)
curl -s -H "Authorization: Bearer fault-token-one-1111" "http://127.0.0.1:$PORT/v1/devices/dev1/state" > "$OUT/faults-state.json"
echo "{\"kills\": $KILLED, \"fps\": $FPS, \"up_s\": $UP, \"command\": \"scripts/faults_results.sh\"}" > "$OUT/faults.json"
cat "$OUT/faults.json"
