#!/usr/bin/env bash
# The commands behind the mIoU table of docs/results/models.md: every committed checkpoint on its
# val split, clean, under the four evaluation shifts, and under two shifts no model saw in training
# (glass_blur, elastic_transform: the honest check of robustness; see docs/results/accuracy.md).
#   scripts/models_results.sh camvid | synthetic
set -euo pipefail
cd "$(dirname "$0")/.."
KIND=${1:-camvid}
case "$KIND" in
  camvid) DATA=camvid:../shared/data/camvid ;;
  synthetic) DATA=synthetic ;;
  *) echo "usage: $0 camvid|synthetic" >&2; exit 2 ;;
esac
OUT=docs/results/models/$KIND
mkdir -p "$OUT"
for shift in clean fog:3 gaussian_noise:3 motion_blur:3 dusk glass_blur:3 elastic_transform:3; do
  for model in device cloud; do
    .venv/bin/tandemseg eval --ckpt "checkpoints/$KIND-$model" --data "$DATA" --split val --shift "$shift" \
      --json "$OUT/$model-${shift/:/}.json" > /dev/null
  done
done
.venv/bin/tandemseg report models "$OUT"   # -> $OUT/table.md
