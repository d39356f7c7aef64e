"""CPU milliseconds per frame of each step a frame takes through the system (`tandemseg bench costs`).

The figures behind docs/results/service.md ("where the fixed costs go") and the PNG level choice in
wire/payload.py. CPU time (time.process_time) on one thread, so other jobs on the machine distort it far
less than wall time.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from tandemseg.cloud.dcam import dcam_update
from tandemseg.data.tensors import to_tensor
from tandemseg.device.steps import run_device
from tandemseg.wire.payload import decode_frame, encode_frame, encode_label_png, pack_probs, unpack_probs


def cpu_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median-free mean CPU ms of `fn` over `repeats` calls after one warm-up call."""
    fn()
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - start) / repeats * 1e3


def png_bytes(image: np.ndarray, level: int) -> int:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=level)
    return len(buf.getvalue())


@torch.inference_mode()
def frame_steps(img: np.ndarray, device: nn.Module, cloud: nn.Module) -> dict[str, Callable[[], object]]:
    """The per-frame steps to time, bound to this frame's inputs."""
    png = encode_frame(img, "png")
    packed, shape = pack_probs(run_device(device, img).probs.numpy())
    probs = unpack_probs(packed, shape)
    pred = cloud(to_tensor([img])).argmax(1)[0].to(torch.uint8).numpy()  # (H, W)
    return {
        "device: encode frame, png level 1 (ms)": lambda: encode_frame(img, "png"),
        "device: encode frame, png level 6 (ms)": lambda: png_bytes(img, 6),
        "cloud: decode png frame (ms)": lambda: decode_frame(png, "png"),
        "cloud: unpack device probabilities (ms)": lambda: unpack_probs(packed, shape),
        "cloud: DCAM update (ms)": lambda: dcam_update(np.eye(len(probs)), probs, pred, 0.1, ignore_index=255),
        "cloud: encode label map png (ms)": lambda: encode_label_png(pred),
    }


@torch.inference_mode()
def cost_breakdown(images: Sequence[np.ndarray], device: nn.Module, cloud: nn.Module, repeats: int = 10) -> dict:
    """Median CPU ms of every step over `images`, PNG sizes at levels 1 and 6, and the batched cloud forward."""
    rows: dict[str, list[float]] = {}
    for img in images:
        for name, fn in frame_steps(img, device, cloud).items():
            rows.setdefault(name, []).append(cpu_ms(fn, repeats))
        rows.setdefault("png level 1 bytes", []).append(len(encode_frame(img, "png")))
        rows.setdefault("png level 6 bytes", []).append(png_bytes(img, 6))
    batch = to_tensor(list(images[:4]))  # (<=4, 3, H, W)
    rows["cloud: batched forward, batch 4, per frame (ms)"] = [cpu_ms(lambda: cloud(batch), 3) / len(batch)]
    return {"frames": len(images), "threads": torch.get_num_threads(), "medians": {k: float(np.median(v)) for k, v in rows.items()}}
