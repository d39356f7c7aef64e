"""ACDC Fig. 4 analogue: input, device only, the device's refined map, collaboration without CFE (the cloud's map),
with CFE (the fused map), ground truth; each frame through the runtime's steps (model step, cloud service, fuse step)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn

from tandemseg.cloud.service import CloudService, ModelSegmenter
from tandemseg.data.base import SegDataset
from tandemseg.device.steps import FusionStep, run_device
from tandemseg.eval.boundary import boundary_counts, boundary_f
from tandemseg.eval.cache import frame_cm
from tandemseg.eval.metrics import miou_of
from tandemseg.eval.preview import draw_grid
from tandemseg.wire.messages import UploadRequest
from tandemseg.wire.payload import decode_label_png, encode_frame

COLUMNS = ("frame", "device only", "device + CFE refine", "collab without CFE (cloud)", "collab with CFE (fused)", "label")


def figure_rows(dataset: SegDataset, indices: Sequence[int], device_model: nn.Module, cloud_model: nn.Module,
                fusion: FusionStep) -> list[dict]:
    """The maps of every column for each frame index, plus per-map mIoU and boundary F of that frame."""
    service = CloudService(ModelSegmenter(cloud_model), dataset.classes)
    rows = []
    for i in indices:
        s = dataset[i]
        out = run_device(device_model, s.image)
        h, w = s.image.shape[:2]
        reply = service.segment_batch([UploadRequest("figure", i, encode_frame(s.image, "png"), "png", h, w, reply_probs=True)])[0]
        cloud = decode_label_png(reply.label_png).astype(np.uint8)
        maps = {"device only": out.pred, "device + CFE refine": fusion.local(out), "collab without CFE (cloud)": cloud,
                "collab with CFE (fused)": fusion.fuse(out, cloud, reply)}
        scores = {k: (miou_of(frame_cm(m, s.label, dataset.classes)), boundary_f(boundary_counts(m, s.label, dataset.classes.ignore_index)))
                  for k, m in maps.items()}
        rows.append({"index": i, "image": s.image, "label": s.label, "maps": maps, "scores": scores})
    return rows


def draw_fusion_figure(rows: list[dict], dataset: SegDataset, out_path: str | Path, title: str) -> Path:
    classes = dataset.classes
    cells = [[r["image"], *(classes.colorize(r["maps"][k]) for k in COLUMNS[1:-1]), classes.colorize(r["label"])] for r in rows]
    captions = [[(col, _score_text(*r["scores"][key]), "0.25") for col, key in enumerate(COLUMNS[1:-1], start=1)] for r in rows]
    return draw_grid(cells, COLUMNS, [f"val #{r['index']}" for r in rows], classes, out_path, captions, title)


def _score_text(miou: float, bf: float | None) -> str:
    return f"mIoU {100 * miou:.1f}" + ("" if bf is None else f", BF {100 * bf:.1f}")
