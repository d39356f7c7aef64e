"""A searched MESS configuration on real frames, timed against the final exit alone in the same run (`exits eval`).

Each frame goes through the configuration (real early exits: stages past a confident exit are not computed)
and then through the final exit alone, one after the other, so both latencies see the same machine state.
GFLOPs per frame come from the search's cost table for the exit each frame took (Table 1's path cost).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from tandemseg.data.base import SegDataset
from tandemseg.eval.metrics import ConfusionMatrix
from tandemseg.exits.costs import CostTable
from tandemseg.exits.network import FINAL, MultiExitSegmenter
from tandemseg.exits.search import Configuration, path_costs
from tandemseg.train.exits import frames_and_labels


def evaluate_mess(net: MultiExitSegmenter, config: Configuration, dataset: SegDataset, limit: int | None, cost_tables: dict) -> dict:
    """Each frame through the configuration (real early exits, timed) and through the final exit alone (timed)."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    nc, ignore = dataset.classes.num_classes, dataset.classes.ignore_index
    cm_mess, cm_final = ConfusionMatrix(nc, ignore), ConfusionMatrix(nc, ignore)
    gt = CostTable.from_json(cost_tables["gflops"])
    path = list(config.path())
    stages = [net.stage_of(k) for k in path]
    gflops_at = dict(zip(path, path_costs(gt, path, stages, decide=config.setting == "input_dependent"), strict=True))
    ms_mess, ms_final, exits_taken = [], [], []
    frames = list(frames_and_labels(dataset, limit))
    net.eval()
    with torch.inference_mode():
        net.base(frames[0][0][None])  # warm-up
        for frame, label in frames:
            x = frame[None]
            t0 = time.perf_counter()
            if config.setting == "input_dependent":
                res = net.input_dependent(x, list(config.exits), config.thresholds, config.pixel_thresholds)
                logits, key = res.logits, res.exits[0]
            else:
                key = path[0] if config.setting == "budgeted" else path[-1]
                logits = net.forward_exit(x, key)
            ms_mess.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            final = net.base(x)
            ms_final.append((time.perf_counter() - t0) * 1e3)
            cm_mess.update(logits.argmax(1), torch.from_numpy(np.asarray(label)[None]))
            cm_final.update(final.argmax(1), torch.from_numpy(np.asarray(label)[None]))
            exits_taken.append(key)
    hist = {k: exits_taken.count(k) for k in path}
    return {"miou": cm_mess.miou(), "final_exit_miou": cm_final.miou(), "frames": n,
            "gflops_per_frame": float(np.mean([gflops_at[k] for k in exits_taken])), "final_gflops_per_frame": float(gt.backbone[-1] + gt.heads[FINAL]),
            "latency_ms": statistics.median(ms_mess), "final_latency_ms": statistics.median(ms_final),
            "latency_ms_mean": float(np.mean(ms_mess)), "final_latency_ms_mean": float(np.mean(ms_final)), "exit_histogram": hist}
