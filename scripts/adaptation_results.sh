#!/usr/bin/env bash
# The commands behind docs/results/adaptation.md (CEMA, paper 002, on the CamVid device).
#
#   scripts/adaptation_results.sh           # severity 3 (and SEVERITIES="3 5" for both), every method
#
# A continual stream plays the first FRAMES val frames under each of the 15 corruptions in turn (CEMA's ImageNet-C
# protocol): 15 x 67 = 1005 frames. Every method runs the same stream through the device runtime; the cloud
# methods run the real cloud service in process (adaptation inline between frames, deterministic). One torch thread.
set -euo pipefail
cd "$(dirname "$0")/.."

T=".venv/bin/tandemseg"
DATA=camvid:../shared/data/camvid
OUT=docs/results/adaptation
FRAMES=${FRAMES:-67}
METHODS=${METHODS:-none bn tent cema upload-all}
mkdir -p "$OUT"
for sev in ${SEVERITIES:-3}; do
  for m in $METHODS; do
    [[ -f $OUT/sev$sev-$m.json ]] || nice -n 5 $T adapt --data "$DATA" --split val --stream "continual:$sev" --frames-per-condition "$FRAMES" \
      --method "$m" --device-ckpt checkpoints/camvid-device --cloud-ckpt checkpoints/camvid-cloud --threads 1 --json "$OUT/sev$sev-$m.json"
  done
done
$T report adaptation "$OUT"
