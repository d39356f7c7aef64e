#!/usr/bin/env bash
# The commands behind docs/results/codec.md (JD feature transmission vs image codecs, on real bytes).
#
#   scripts/codec_results.sh            # train the CamVid codecs (skips finished ones), then measure
#   TRAIN=0 scripts/codec_results.sh    # measure only
#
# Every codec splits the committed CamVid device (frozen) at its last encoder stage (320 channels at /16 of
# the device's 180x240 input) and trains on the train split's cached features (and their mirror images) for
# EPOCHS epochs; nothing is selected on val (the last epoch is kept). Points are measured on val.
# Runs go to runs/codec/ (git-ignored); the low-, mid- and high-rate JD codecs are copied to checkpoints/.
set -euo pipefail
cd "$(dirname "$0")/.."

T=".venv/bin/tandemseg"
DATA=camvid:../shared/data/camvid
DEV=checkpoints/camvid-device
CLOUD=checkpoints/camvid-cloud
RUNS=runs/codec
OUT=docs/results/codec
EPOCHS=${EPOCHS:-25}
LAMBDAS=${LAMBDAS:-"0.03 0.1 0.3 1 3"}
KS=${KS:-"1 2 4"}  # Fig. 8 at lambda 0.3 (K = 3 is the ladder's)
JOBS=${JOBS:-2}  # trainings in parallel, one torch thread each
mkdir -p "$RUNS" "$OUT"

train() {  # train NAME ARGS...: one codec into runs/codec/NAME unless it is there
  local name=$1; shift
  [[ -f $RUNS/$name/card.json ]] && return 0
  nice -n 5 $T codec train --device-ckpt "$DEV" --data "$DATA" --out "$RUNS/$name" --split -1 --epochs "$EPOCHS" \
    --eval-every 5 --threads 1 "$@" > "$RUNS/$name.log" 2>&1
}

if [[ ${TRAIN:-1} == 1 ]]; then
  jobs_list=()
  for l in $LAMBDAS; do jobs_list+=("jd-l$l --lmbda $l"); done
  jobs_list+=("none --decoder none --lmbda 1" "sdd-l0.3 --decoder sd+d --lmbda 0.3")
  for k in $KS; do jobs_list+=("jd-l0.3-K$k --lmbda 0.3 --K $k"); done
  for job in "${jobs_list[@]}"; do
    while (( $(jobs -rp | wc -l) >= JOBS )); do sleep 5; done
    # shellcheck disable=SC2086
    train $job &
  done
  wait
fi

CKPTS=()
for l in $LAMBDAS; do CKPTS+=(--codec-ckpt "$RUNS/jd-l$l"); done
CKPTS+=(--codec-ckpt "$RUNS/none" --codec-ckpt "$RUNS/sdd-l0.3")
$T rd --data "$DATA" --split val --device-ckpt "$DEV" --cloud-ckpt "$CLOUD" "${CKPTS[@]}" \
  --image-codecs "png,jpeg:10..90,webp:10..90,avif:10..90" --threads 2 --json "$OUT/rd.json"
KCKPTS=(--codec-ckpt "$RUNS/jd-l0.3")
for k in $KS; do KCKPTS+=(--codec-ckpt "$RUNS/jd-l0.3-K$k"); done
$T rd --data "$DATA" --split val --device-ckpt "$DEV" --cloud-ckpt "$CLOUD" "${KCKPTS[@]}" --image-codecs png \
  --threads 2 --json "$OUT/rd-k.json"
nice -n -5 $T bench codec --device-ckpt "$DEV" --codec-ckpt "$RUNS/jd-l0.1" --cloud-ckpt "$CLOUD" --data "$DATA" \
  --frames 30 --threads 1 --json "$OUT/bench.json"
$T report codec "$OUT"
