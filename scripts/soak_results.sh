#!/usr/bin/env bash
# The soak behind docs/results/reliability.md: DEVICES simulated devices against one server on loopback for
# SOAK_S seconds (open loop, bounded request loops), latency per minute and the server's memory.
#
#   scripts/soak_results.sh                       # DEVICES=50 SOAK_S=1800 (the issue's soak)
#   SOAK_S=600 scripts/soak_results.sh            # a shorter one
set -euo pipefail
cd "$(dirname "$0")/.."

T=".venv/bin/tandemseg"
PORT=${PORT:-18734}
DEVICES=${DEVICES:-50}
SOAK_S=${SOAK_S:-1800}
RATE=${RATE:-10}          # frames/s offered in total (0.2 per device)
OUT=docs/results/reliability
mkdir -p "$OUT"
TOKENS=$(mktemp)
for i in $(seq "$DEVICES"); do echo "dev$i:soak-token-$i-0000"; done > "$TOKENS"
$T serve --cloud-ckpt checkpoints/synthetic-cloud --tokens "$TOKENS" --port "$PORT" --threads 1 --max-inflight-per-device 4 \
  > "$OUT/soak-server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; rm -f "$TOKENS"' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$PORT/v1/health" > /dev/null && break; sleep 1; done
rss() { awk '/VmRSS/ {print $2}' "/proc/$SERVER/status"; }
# warm-up: every device once, then the memory baseline
$T loadtest --server "http://127.0.0.1:$PORT" --tokens "$TOKENS" --devices "$DEVICES" --frames 2 --height 180 --width 240 > /dev/null
RSS_WARM=$(rss)
FRAMES=$(( SOAK_S * RATE / DEVICES ))   # the last request goes out before the time cap
$T loadtest --server "http://127.0.0.1:$PORT" --tokens "$TOKENS" --devices "$DEVICES" --frames "$FRAMES" --rate "$RATE" \
  --height 180 --width 240 --max-seconds "$SOAK_S" --window-s 60 --timeout-s 30 --json "$OUT/soak-loadtest.json"
RSS_END=$(rss)
echo "{\"devices\": $DEVICES, \"seconds\": $SOAK_S, \"rate_fps\": $RATE, \"rss_kb_after_warmup\": $RSS_WARM, \"rss_kb_end\": $RSS_END, \"command\": \"scripts/soak_results.sh\"}" \
  > "$OUT/soak.json"
cat "$OUT/soak.json"
