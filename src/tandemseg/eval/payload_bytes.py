"""What crosses the network per frame: encoded bytes of each frame codec, and DCAM's side payloads.

The figures behind the payload table of docs/results/service.md (`tandemseg bench payload`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from tandemseg.data.base import SegDataset
from tandemseg.device.steps import run_device
from tandemseg.wire.payload import encode_frame, encode_label_png, pack_probs

CODECS = ("png", "webp:100", "webp:90", "webp:75", "jpeg:95", "jpeg:90", "jpeg:75", "jpeg:50")


def payload_bytes(dataset: SegDataset, device_model: nn.Module, codecs: Sequence[str] = CODECS, frames: int = 20) -> dict:
    """Mean bytes per frame over the first `frames` frames: uncompressed, each codec, the device's packed
    probabilities (uploaded for DCAM), its label map as PNG (the size of a cloud reply) and U as float32."""
    n = min(frames, len(dataset))
    if n < 1:
        raise ValueError("payload_bytes needs at least one frame")
    raw, probs, labels = [], [], []
    sizes: dict[str, list[int]] = {c: [] for c in codecs}
    for i in range(n):
        image = dataset[i].image
        raw.append(image.nbytes)
        for codec in codecs:
            sizes[codec].append(len(encode_frame(image, codec)))
        device = run_device(device_model, image)
        probs.append(len(pack_probs(device.probs.numpy())[0]))
        labels.append(len(encode_label_png(device.pred)))
    shape = list(device.probs.shape)  # (C, h, w) of the last frame
    return {
        "frames": n, "frame": list(dataset[0].image.shape), "uncompressed_bytes": float(np.mean(raw)),
        "codecs": {c: {"bytes_mean": float(np.mean(v)), "ratio": float(np.mean(raw) / np.mean(v))} for c, v in sizes.items()},
        "device_probs_bytes_mean": float(np.mean(probs)), "device_probs_uncompressed": int(np.prod(shape)),
        "device_probs_shape": shape, "label_png_bytes_mean": float(np.mean(labels)), "u_float32_bytes": 4 * shape[0] ** 2,
    }
