#!/usr/bin/env bash
# The commands behind docs/results/reliability.md: a schemathesis campaign against a running server.
#
#   scripts/reliability_results.sh            # N=1500 examples per operation and token mode (>10,000 requests)
#
# The server runs the synthetic cloud with CEMA adaptation on (every route exists), on loopback. schemathesis
# generates requests from the server's OpenAPI schema for every route, once with a valid device token and once
# without; the server's own Prometheus counters (loopback /metrics) count the requests and the 5xx answers, and
# /proc gives its resident memory before and after.
set -euo pipefail
cd "$(dirname "$0")/.."

T=".venv/bin/tandemseg"
ST=".venv/bin/st"
N=${N:-1500}
PORT=${PORT:-18731}
OUT=docs/results/reliability
mkdir -p "$OUT"
TOKENS=$(mktemp)
printf 'dev1:fuzz-token-one-1111\ndev2:fuzz-token-two-2222\n' > "$TOKENS"
$T serve --cloud-ckpt checkpoints/synthetic-cloud --tokens "$TOKENS" --port "$PORT" --max-side 1024 --threads 1 \
  --adapt checkpoints/synthetic-device > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; rm -f "$TOKENS"' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$PORT/v1/health" > /dev/null && break; sleep 1; done
rss() { awk '/VmRSS/ {print $2}' "/proc/$SERVER/status"; }
count() { curl -s "http://127.0.0.1:$PORT/metrics" | awk -v pat="$1" '/^tandemseg_requests_total/ && $0 ~ pat {s += $NF} END {printf "%d\n", s}'; }
# warm-up: one pass of each operation, so the "before" memory includes the models' first forwards
$ST run "http://127.0.0.1:$PORT/openapi.json" -H "Authorization: Bearer fuzz-token-one-1111" -n 5 --checks not_a_server_error > /dev/null || true
RSS_BEFORE=$(rss)
REQ_BEFORE=$(count .)
START=$(date +%s)
set +e
$ST run "http://127.0.0.1:$PORT/openapi.json" -H "Authorization: Bearer fuzz-token-one-1111" -n "$N" --checks not_a_server_error \
  --generation-deterministic > "$OUT/schemathesis-token.txt" 2>&1
RC_TOKEN=$?
$ST run "http://127.0.0.1:$PORT/openapi.json" -n "$N" --checks not_a_server_error --generation-deterministic > "$OUT/schemathesis-no-token.txt" 2>&1
RC_NONE=$?
set -e
SECONDS_RUN=$(( $(date +%s) - START ))
RSS_AFTER=$(rss)
REQUESTS=$(( $(count .) - REQ_BEFORE ))
SERVER_ERRORS=$(count 'status="5')
ALIVE=$(curl -sf "http://127.0.0.1:$PORT/v1/health" > /dev/null && echo yes || echo no)
cat > "$OUT/fuzz.json" <<JSON
{"command": "scripts/reliability_results.sh", "examples_per_operation": $N, "requests": $REQUESTS, "responses_5xx": $SERVER_ERRORS,
 "schemathesis_exit_token": $RC_TOKEN, "schemathesis_exit_no_token": $RC_NONE, "server_alive_after": "$ALIVE",
 "rss_kb_before": $RSS_BEFORE, "rss_kb_after": $RSS_AFTER, "seconds": $SECONDS_RUN}
JSON
cat "$OUT/fuzz.json"
