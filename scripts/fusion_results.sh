#!/usr/bin/env bash
# The commands behind docs/results/fusion.md (ACDC's CFE on the CamVid device and cloud).
#
#   scripts/fusion_results.sh           # train the variants (skips finished ones), evaluate, figure, bench
#   TRAIN=0 scripts/fusion_results.sh   # evaluate only
#
# Every CFE trains on CamVid TRAIN (device and cloud frozen, their outputs collected once through the runtime
# into runs/fusion-cache), 8 epochs, the last epoch kept: nothing is selected on val. The headline
# configuration (sparse, 2 layers, 10% mask) is the paper's shape, fixed before any run; the other variants are
# the Table 4 / Table 5 ablations. Evaluation on VAL, clean (101 frames) and the mixed shift stream (val x 3
# seeded schedules, 303 frames; no model was trained on its shifts except the cloud, see accuracy.md).
set -euo pipefail
cd "$(dirname "$0")/.."

T=".venv/bin/tandemseg"
DATA=camvid:../shared/data/camvid
DEV=checkpoints/camvid-device
CLOUD=checkpoints/camvid-cloud
U=checkpoints/camvid-uncertainty.safetensors
RUNS=runs/fusion
OUT=docs/results/fusion
CACHE=runs/fusion-eval-cache
mkdir -p "$RUNS" "$OUT" "$CACHE"

train() {  # NAME ARGS...: one variant into runs/fusion/NAME (skipped when its card exists)
  local name=$1; shift
  [[ -f $RUNS/$name/card.json ]] || nice -n 5 $T fusion train --device-ckpt "$DEV" --cloud-ckpt "$CLOUD" --data "$DATA" \
    --out "$RUNS/$name" "$@" --json "$RUNS/$name.json"
}
if [[ ${TRAIN:-1} == 1 ]]; then
  train sparse-l2 --refiner sparse --layers 2          # the headline CFE, copied to checkpoints/camvid-fusion
  [[ -f checkpoints/camvid-fusion/card.json ]] || cp -r "$RUNS/sparse-l2" checkpoints/camvid-fusion
  train point-l2 --refiner point --layers 2            # PointRend-style point head, same sites and inputs
  train sparse-l1 --refiner sparse --layers 1
  train dense --refiner dense --hidden 16              # the dense small U-Net (16 channels: 32 cost more than the device)
  train sparse-l2-p5 --refiner sparse --layers 2 --top-percent 5
  train sparse-l2-p20 --refiner sparse --layers 2 --top-percent 20
fi
# The training choices (loss, weighting) were checked on held-out TRAIN frames: scripts/fusion_design_checks.py
# The committed checkpoint is the headline run's folder (its card's recipe names this path):
#   tandemseg fusion train --device-ckpt checkpoints/camvid-device --cloud-ckpt checkpoints/camvid-cloud \
#     --data camvid:../shared/data/camvid --out checkpoints/camvid-fusion --refiner sparse --layers 2

# Table 5 (+ Table 4's rows as full CFE) on clean val, acdc and entropy at 5 / 10 / 20% uploads
nice -n 5 $T fusion eval --device-ckpt "$DEV" --cloud-ckpt "$CLOUD" --data "$DATA" --uncertainty "$U" --cache-dir "$CACHE" \
  --variant point=refine:$RUNS/point-l2 --variant dense=refine:$RUNS/dense --variant sparse=refine:checkpoints/camvid-fusion \
  --variant cfe=cfe:checkpoints/camvid-fusion --variant point+fuse=cfe:$RUNS/point-l2 --variant dense+fuse=cfe:$RUNS/dense \
  --variant cfe-1layer=cfe:$RUNS/sparse-l1 --variant cfe-mask5=cfe:$RUNS/sparse-l2-p5 --variant cfe-mask20=cfe:$RUNS/sparse-l2-p20 \
  --json "$OUT/clean.json" --markdown "$OUT/clean.md"
# the mixed shift stream: base, refinement alone, full CFE
nice -n 5 $T fusion eval --device-ckpt "$DEV" --cloud-ckpt "$CLOUD" --data "$DATA" --uncertainty "$U" --cache-dir "$CACHE" \
  --shift stream:mixed/10 --repeat-schedules 3 \
  --variant sparse=refine:checkpoints/camvid-fusion --variant cfe=cfe:checkpoints/camvid-fusion \
  --json "$OUT/mixed.json" --markdown "$OUT/mixed.md"
# Fig. 4: four val frames fixed in advance (evenly spaced), through the runtime's steps
$T fusion figure --device-ckpt "$DEV" --cloud-ckpt "$CLOUD" --fusion-ckpt checkpoints/camvid-fusion --data "$DATA" \
  --frames 0,25,50,75 --out "$OUT/figure.png"
# latency: CFE on top of the device model step, one thread, idle machine
nice -n -5 $T bench models --ckpt checkpoints/camvid-fusion --ckpt checkpoints/synthetic-fusion --threads 1 --runs 30 \
  --json "$OUT/bench.json" --markdown "$OUT/bench.md" || \
  $T bench models --ckpt checkpoints/camvid-fusion --ckpt checkpoints/synthetic-fusion --threads 1 --runs 30 \
  --json "$OUT/bench.json" --markdown "$OUT/bench.md"
