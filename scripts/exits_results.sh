#!/usr/bin/env bash
# The commands behind docs/results/exits.md (MESS on the CamVid device network).
#
#   scripts/exits_results.sh           # train (skips finished stages), search, evaluate, tables
#   TRAIN=0 scripts/exits_results.sh   # search and evaluate only
#
# Stage 1 starts from the committed CamVid device (exit-dropout fine-tuning, eq. 2), stage 2 trains candidate
# heads on its frozen backbone with PFD (eq. 3) and, for Table 6, with CE and KD. The configuration is
# searched on TRAIN frames (calibration), evaluated on VAL, clean and under shifts. One torch thread each.
set -euo pipefail
cd "$(dirname "$0")/.."

T=".venv/bin/tandemseg"
DATA=camvid:../shared/data/camvid
DEV=checkpoints/camvid-device
RUNS=runs/mess
OUT=docs/results/exits
HEADS=${HEADS:-crm1-b0-rdi0-fcn,crm2-b1-rdi1-dlb}
mkdir -p "$RUNS" "$OUT"

if [[ ${TRAIN:-1} == 1 ]]; then
  [[ -f $RUNS/camvid-s1/card.json ]] || nice -n 5 $T exits train --stage 1 --device-ckpt "$DEV" --data "$DATA" \
    --out "$RUNS/camvid-s1" --exits 3 --epochs 4 --lr 5e-4 --threads 1
  for loss in pfd ce; do
    [[ -f $RUNS/camvid-s2-$loss/card.json ]] || nice -n 5 $T exits train --stage 2 --init "$RUNS/camvid-s1" --data "$DATA" \
      --out "$RUNS/camvid-s2-$loss" --heads "$HEADS" --loss "$loss" --epochs 3 --lr 1e-3 --label-stride 2 --threads 1
  done
fi

# Search on the train split (calibration frames), three constraints of Table 2
for drop in 0 0.001 0.01; do
  $T exits search --ckpt "$RUNS/camvid-s2-pfd" --data "$DATA" --split train --max-miou-drop "$drop" --threads 1 \
    --out "$RUNS/camvid-mess-drop$drop" --json "$OUT/search-drop$drop.json"
done
# Evaluate the <= 1 pp configuration on val, clean and shifted, timed against the final exit in the same run
for shift in clean fog:3 gaussian_noise:3 dusk; do
  $T exits eval --ckpt "$RUNS/camvid-mess-drop0.01" --data "$DATA" --split val --shift "$shift" --threads 1 \
    --json "$OUT/eval-drop0.01-${shift/:/}.json"
done
# The best trade-off at the issue's GFLOPs target (2.5x fewer than the final exit: 0.541 of 1.353), most accurate
# within it, on val clean and under fog (more frames should go deep under fog)
$T exits search --ckpt "$RUNS/camvid-s2-pfd" --data "$DATA" --split train --max-gflops 0.541 --objective miou --threads 1 \
  --out "$RUNS/camvid-mess-gflops2.5x" --json "$OUT/search-gflops2.5x.json"
for shift in clean fog:3; do
  $T exits eval --ckpt "$RUNS/camvid-mess-gflops2.5x" --data "$DATA" --split val --shift "$shift" --threads 1 \
    --json "$OUT/eval-gflops2.5x-${shift/:/}.json"
done
# the training figures (per-exit val mIoU of every stage) travel with the results
cp "$RUNS/camvid-s1/card.json" "$OUT/stage1-card.json"
for loss in pfd ce; do cp "$RUNS/camvid-s2-$loss/card.json" "$OUT/stage2-$loss-card.json"; done
$T report exits "$OUT"
