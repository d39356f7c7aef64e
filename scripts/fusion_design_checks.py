"""The held-out train checks behind CFE's training choices (docs/methods/fusion.md, "How these were chosen").

Never val: the CFE trains on CamVid train frames 0-299 and is scored on train frames 300-366, which the device
trained on and the CFE did not. Reads the collected train outputs that `tandemseg fusion train` caches in
runs/fusion-cache (run scripts/fusion_results.sh first), one torch thread.

    .venv/bin/python scripts/fusion_design_checks.py refine weighted    # M_u alone, ENet class weights, 3 epochs
    .venv/bin/python scripts/fusion_design_checks.py refine unweighted
    .venv/bin/python scripts/fusion_design_checks.py full weighted      # M_u + fusion, fused loss weighted, 2 epochs
    .venv/bin/python scripts/fusion_design_checks.py full unweighted
    .venv/bin/python scripts/fusion_design_checks.py device             # device and cloud mIoU on all train frames

Prints one JSON line per epoch (mIoU % of the held-out frames).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tandemseg.eval.metrics import miou_of
from tandemseg.fusion.config import FusionConfig
from tandemseg.fusion.engine import CollaborativeFusion
from tandemseg.train.fusion import FusionSet, batch_inputs, fusion_confusions, load_fusion_set
from tandemseg.train.trainer import class_weights

TRAIN, BATCH, IGNORE, C = 300, 4, 255, 11


def train_set() -> FusionSet:
    """The cached outputs of the 367 CamVid train frames (the largest fusion cache of 367 frames)."""
    for path in sorted(Path("runs/fusion-cache").glob("fusion-*.safetensors")):
        data = load_fusion_set(path)
        if len(data) == 367:
            return data
    sys.exit("no cached CamVid train outputs in runs/fusion-cache: run scripts/fusion_results.sh first")


def report(fusion: CollaborativeFusion | None, data: FusionSet, **keys) -> None:
    cms = fusion_confusions(fusion, data, C, IGNORE)
    print(json.dumps({**keys, **{k: round(100 * miou_of(v.sum(0)), 2) for k, v in cms.items()}}), flush=True)


def main(mode: str, weighting: str = "unweighted") -> None:
    torch.set_num_threads(1)
    data = train_set()
    if mode == "device":
        report(None, data, frames=len(data))
        return
    held = FusionSet(data.probs[TRAIN:], data.cloud[TRAIN:], data.images[TRAIN:], data.labels[TRAIN:], data.reply_prob_bytes[TRAIN:])
    weight = class_weights([lab.numpy() for lab in data.labels[:TRAIN]], C, IGNORE) if weighting == "weighted" else None
    torch.manual_seed(0)
    fusion = CollaborativeFusion(FusionConfig(layers=2))
    opt = torch.optim.Adam(fusion.refine.parameters() if mode == "refine" else fusion.parameters(), lr=2e-3)
    rng = np.random.default_rng(0)
    for epoch in range(3 if mode == "refine" else 2):
        order = rng.permutation(TRAIN)
        for b in range(TRAIN // BATCH):
            idx = torch.from_numpy(order[b * BATCH:(b + 1) * BATCH])
            probs, image, cloud, labels = batch_inputs(data, idx, bool(rng.random() < 0.5))
            local, fused, changed = fusion.both(probs, image, cloud, detach=True)
            loss = F.cross_entropy(local, labels.masked_fill(~changed, IGNORE), weight=None if mode == "full" else weight,
                                   ignore_index=IGNORE)
            if mode == "full":
                loss = loss + F.cross_entropy(fused, labels, weight=weight, ignore_index=IGNORE)
            opt.zero_grad()
            loss.backward()
            opt.step()
        fusion.eval()
        report(fusion, held, mode=mode, weighting=weighting, epoch=epoch + 1)
        fusion.train()


if __name__ == "__main__":
    main(*sys.argv[1:])
