"""MESS Fig. 4: exit policies compared on the same exits and frames, as mIoU against GFLOPs per frame.

Every policy answers each frame at the first exit of a fixed path whose image-level score clears a threshold
(the final exit otherwise); sweeping the threshold traces a curve. Scores (paper 003):

    confidence_eq9    eq. 7 with the semantic-edge smoothing of eq. 8-9 (the paper's policy)
    confidence        eq. 7 alone: fraction of pixels whose top-1 probability clears the pixel threshold
    mean_confidence   the mean top-1 probability over the map (the averaging baseline)
    oracle            knows the labels: the first exit whose frame pixel accuracy is within `t` of the final
                      exit's, for a sweep of tolerances t (an upper bound no causal policy reaches)

A curve is a sweep, not a choice: nothing is selected on these frames, so val figures are fair.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from tandemseg.exits.calibrate import frame_confusion
from tandemseg.exits.confidence import image_confidence, mean_confidence
from tandemseg.exits.costs import CostTable, eval_mode
from tandemseg.exits.network import FINAL, MultiExitSegmenter
from tandemseg.exits.search import miou_batch, path_costs
from tandemseg.models.blocks import resize

SCORES = ("confidence_eq9", "confidence", "mean_confidence")
THRESHOLDS = tuple(np.round(np.linspace(0.0, 1.0, 41), 4))
ORACLE_TOLERANCES = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 1.0)


@torch.inference_mode()
def collect_scores(net: MultiExitSegmenter, path: Sequence[str], samples: Iterable[tuple[torch.Tensor, np.ndarray]],
                   pixel_threshold: float = 0.8, ignore: int = 255) -> dict[str, np.ndarray]:
    """Per frame and exit of `path` (final last): 'cms' (F, E, C, C) and each score of SCORES (F, E)."""
    cms, scores = [], {s: [] for s in SCORES}
    with eval_mode(net):
        for frame, label in samples:
            target = np.asarray(label)
            feats = net.encode(frame[None], list(path))
            row_cm, row = [], {s: [] for s in SCORES}
            for k in path:
                native = net.exit_native(k, feats)  # (1, C, h, w)
                row_cm.append(frame_confusion(resize(native, target.shape).argmax(1)[0].numpy(), target, net.num_classes, ignore))
                probs = native[0].float().softmax(0)  # (C, h, w)
                row["confidence_eq9"].append(image_confidence(probs, pixel_threshold, True))
                row["confidence"].append(image_confidence(probs, pixel_threshold, False))
                row["mean_confidence"].append(mean_confidence(probs))
            cms.append(np.stack(row_cm))
            for s in SCORES:
                scores[s].append(row[s])
    return {"cms": np.stack(cms), **{s: np.array(v) for s, v in scores.items()}}


def exit_at_threshold(score: np.ndarray, threshold: float) -> np.ndarray:
    """(F, E) scores -> (F,) index of the first early exit with score >= threshold, else the final (E - 1)."""
    early = score[:, :-1] >= threshold  # (F, E-1)
    return np.where(early.any(1), early.argmax(1), score.shape[1] - 1)


def oracle_exit(cms: np.ndarray, tolerance: float) -> np.ndarray:
    """(F,) the first exit whose frame pixel accuracy is within `tolerance` of the final exit's."""
    correct = np.diagonal(cms, axis1=2, axis2=3).sum(-1)  # (F, E)
    acc = correct / np.maximum(cms.sum((2, 3)), 1)  # (F, E)
    ok = acc >= acc[:, -1:] - tolerance  # (F, E); the final exit always qualifies
    return ok.argmax(1)


def point(cms: np.ndarray, costs: np.ndarray, assign: np.ndarray) -> dict:
    chosen = cms[np.arange(len(assign)), assign]  # (F, C, C)
    return {"miou": float(miou_batch(chosen.sum(0)[None])[0]), "gflops": float(costs[assign].mean()),
            "early_share": float((assign < cms.shape[1] - 1).mean())}


def policy_curves(collected: dict[str, np.ndarray], path: Sequence[str], stages: Sequence[int], table: CostTable) -> dict:
    """Every policy's curve on the collected frames: {policy: [{threshold|tolerance, miou, gflops, early_share}]}."""
    cms = collected["cms"]
    decide = path_costs(table, path, stages, decide=True)  # (E,) a causal policy pays every head and check on the way
    alone = np.array([table.backbone[s] + table.heads[k] for k, s in zip(path, stages, strict=True)])  # (E,) the oracle runs one head
    curves = {s: [{"threshold": float(t), **point(cms, decide, exit_at_threshold(collected[s], t))} for t in THRESHOLDS] for s in SCORES}
    curves["oracle"] = [{"tolerance": t, **point(cms, alone, oracle_exit(cms, t))} for t in ORACLE_TOLERANCES]
    final = point(cms, alone, np.full(cms.shape[0], cms.shape[1] - 1))  # the final exit alone
    return {"path": list(path), "frames": int(cms.shape[0]), "final": final, "curves": curves}


def default_path(net: MultiExitSegmenter) -> list[str]:
    """One exit per point, the cheapest architecture there (the FCN head when trained), and the final exit."""
    by_stage: dict[int, str] = {}
    for k in net.exit_keys:
        by_stage.setdefault(net.stage_of(k), k)
    return [*[by_stage[s] for s in sorted(by_stage)], FINAL]
