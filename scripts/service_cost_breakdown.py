"""CPU milliseconds per frame of each step a frame takes through the system, on one thread, CamVid val frames.

    .venv/bin/python scripts/service_cost_breakdown.py [--frames 10] [--json docs/results/service/cost-breakdown.json]

The figures behind docs/results/service.md ("where the rest goes") and the PNG level choice in wire/payload.py.
CPU time (time.process_time), so other jobs on the machine distort it far less than wall time.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from tandemseg.cloud.dcam import dcam_update
from tandemseg.data.spec import open_dataset
from tandemseg.data.tensors import to_tensor
from tandemseg.device.runtime import run_device
from tandemseg.models.checkpoint import load_checkpoint
from tandemseg.wire.payload import decode_frame, encode_frame, encode_label_png, pack_probs, unpack_probs


def cpu_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - start) / repeats * 1e3


def png_bytes(image: np.ndarray, level: int) -> int:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=level)
    return len(buf.getvalue())


def frame_steps(img: np.ndarray, dev: torch.nn.Module, cloud: torch.nn.Module) -> dict[str, Callable[[], object]]:
    """The per-frame steps to time, bound to this frame's inputs."""
    png = encode_frame(img, "png")
    packed, shape = pack_probs(run_device(dev, img).probs.numpy())
    probs = unpack_probs(packed, shape)
    with torch.inference_mode():
        pred = cloud(to_tensor([img])).argmax(1)[0].to(torch.uint8).numpy()
    return {
        "device: encode frame, png level 1 (ms)": lambda: encode_frame(img, "png"),
        "device: encode frame, png level 6 (ms)": lambda: png_bytes(img, 6),
        "cloud: decode png frame (ms)": lambda: decode_frame(png, "png"),
        "cloud: unpack device probabilities (ms)": lambda: unpack_probs(packed, shape),
        "cloud: DCAM update (ms)": lambda: dcam_update(np.eye(len(probs)), probs, pred, 0.1, ignore_index=255),
        "cloud: encode label map png (ms)": lambda: encode_label_png(pred),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="camvid:../shared/data/camvid")
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = open_dataset(args.data, "val")
    dev = load_checkpoint("checkpoints/camvid-device").model
    cloud = load_checkpoint("checkpoints/camvid-cloud").model
    images = [ds[i].image for i in np.linspace(0, len(ds) - 1, args.frames).astype(int)]
    rows: dict[str, list[float]] = {}
    for img in images:
        steps = frame_steps(img, dev, cloud)
        for name, fn in steps.items():
            rows.setdefault(name, []).append(cpu_ms(fn, args.repeats))
        rows.setdefault("png level 1 bytes", []).append(len(encode_frame(img, "png")))
        rows.setdefault("png level 6 bytes", []).append(png_bytes(img, 6))
    with torch.inference_mode():
        batch = to_tensor(images[:4])
        rows["cloud: batched forward, batch 4, per frame (ms)"] = [cpu_ms(lambda: cloud(batch), 3) / len(images[:4])]
    result = {"frames": len(images), "threads": 1, "medians": {k: float(np.median(v)) for k, v in rows.items()}}
    for k, v in result["medians"].items():
        print(f"{k:50s} {v:10.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
