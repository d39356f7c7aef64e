"""Measuring feature codecs on real bytes, and the rate-distortion study against image codecs (JD Fig. 5, Table 2).

Every figure here comes from real bitstreams: a feature codec's latents are rounded, range-coded, decoded
back exactly and segmented by its cloud-side decoder; an image codec's bytes are what Pillow writes, and
the cloud model segments the decoded image. bpp divides bits by the pixels of the full-resolution input
frame (what an image codec codes), for both kinds, so the curves share one axis.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tandemseg.cloud.service import ModelSegmenter
from tandemseg.codec.container import CRC, HEADER
from tandemseg.codec.model import FeatureCodec
from tandemseg.codec.split import split_features
from tandemseg.data.base import SegDataset
from tandemseg.data.tensors import to_tensor
from tandemseg.device.steps import LiveModel, feature_steps
from tandemseg.eval.metrics import ConfusionMatrix
from tandemseg.heap import HeapTrimmer
from tandemseg.models.flops import count_call_gflops
from tandemseg.wire.payload import decode_frame, encode_frame, parse_codec

METHODS = {"jd": "jd", "sd+d": "sd+d", "none": "no-compression"}  # codec decoder -> method name of the RD study
CONTAINER_OVERHEAD = HEADER.size + CRC.size  # bytes a feature upload carries besides its two bitstreams


@dataclass
class FeatureSet:
    """Split features of a dataset, computed once: z (N, C_z, h, w) float32 and labels (N, H, W) int64."""

    z: torch.Tensor
    labels: torch.Tensor
    frame_hw: tuple[int, int]

    def __len__(self) -> int:
        return self.z.shape[0]


@torch.inference_mode()
def split_feature_set(device: nn.Module, dataset: SegDataset, split_index: int, mirror: bool = False,
                      limit: int | None = None, on_frame: Callable[[], None] | None = None) -> FeatureSet:
    """z = E(x) at `split_index` for every frame (and its mirror image when `mirror`), with the labels."""
    device.eval()
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise ValueError("the dataset has no frames")
    zs, labels, heap = [], [], HeapTrimmer()
    for i in range(n):
        s = dataset[i]
        x = to_tensor([s.image])  # (1, 3, H, W)
        y = torch.from_numpy(s.label.astype(np.int64))  # (H, W)
        views = [(x, y), (x.flip(-1), y.flip(-1))] if mirror else [(x, y)]
        for xv, yv in views:
            zs.append(split_features(device, xv, split_index)[0].clone())  # (C_z, h, w)
            labels.append(yv)
        heap.tick()
        if on_frame:
            on_frame()
    frame_hw = tuple(int(v) for v in labels[0].shape)
    return FeatureSet(torch.stack(zs), torch.stack(labels), frame_hw)


@torch.inference_mode()
def evaluate_codec(codec: FeatureCodec, features: FeatureSet, num_classes: int, ignore_index: int,
                   on_frame: Callable[[], None] | None = None) -> dict:
    """mIoU from the decoded bitstreams (true rounding, range coding, exact decode); real bytes per frame (the two
    bitstreams plus the container's header and CRC: what crosses the wire); bpp on the input frame's pixels; the
    median codec-side encode / decode ms (split features given); the cloud side's parameters and GFLOPs."""
    codec.eval()
    codec.update()
    cm = ConfusionMatrix(num_classes, ignore_index)
    sizes, enc_ms, dec_ms = [], [], []
    h, w = features.frame_hw
    for i in range(len(features)):
        z = features.z[i:i + 1]  # (1, C_z, h, w)
        t0 = time.perf_counter()
        if codec.compresses:
            coded = codec.compress(z)
            t1 = time.perf_counter()
            r_hat, _ = codec.decompress(coded)
            logits = codec.decode(r_hat, tuple(z.shape[-2:]), (h, w))  # (1, S, H, W)
            sizes.append(coded[0].num_bytes + CONTAINER_OVERHEAD)
        else:  # the float-feature baseline: 32-bit floats on the wire, no entropy coding
            t1 = time.perf_counter()
            logits = codec(z, (h, w)).logits
            sizes.append(z.numel() * 4)
        enc_ms.append((t1 - t0) * 1e3)
        dec_ms.append((time.perf_counter() - t1) * 1e3)
        cm.update(logits.argmax(1), features.labels[i:i + 1])
        if on_frame:
            on_frame()
    mean_bytes = float(np.mean(sizes))
    return {"miou": cm.miou(), "bytes_per_frame": mean_bytes, "bpp": mean_bytes * 8 / (h * w), "frames": len(features),
            "encode_ms": float(np.median(enc_ms)), "decode_ms": float(np.median(dec_ms)),
            "cloud_parameters": codec.parameter_counts()["cloud"], "cloud_gflops": cloud_gflops(codec, features)}


@torch.inference_mode()
def cloud_gflops(codec: FeatureCodec, features: FeatureSet) -> float:
    """GFLOPs of the cloud side for one frame: the decoder from the latents (JD, or SD + D; the float head for the
    no-compression baseline). The hyperprior decoder's integer pass is not a float op and is not counted."""
    z = features.z[:1]  # (1, C_z, h, w)
    if not codec.compresses:
        return count_call_gflops(lambda: codec(z, features.frame_hw))
    r_hat = torch.round(codec.se(z))  # (1, C_r, h_r, w_r)
    return count_call_gflops(lambda: codec.decode(r_hat, tuple(z.shape[-2:]), features.frame_hw))


def codec_point(codec: FeatureCodec, features: FeatureSet, num_classes: int, ignore_index: int,
                on_frame: Callable[[], None] | None = None) -> dict:
    """One RD point of a feature codec: its method (jd | sd+d | no-compression), setting and figures."""
    cfg = codec.cfg
    setting = "float32 features" if cfg.decoder == "none" else f"lambda={cfg.lmbda:g}, K={cfg.K if cfg.overparam else 1}"
    return {"method": METHODS[cfg.decoder], "setting": setting, **evaluate_codec(codec, features, num_classes, ignore_index, on_frame)}


def expand_image_codecs(text: str) -> list[str]:
    """'png,jpeg:10..90,webp:30' -> ['png', 'jpeg:10', 'jpeg:30', ..., 'jpeg:90', 'webp:30']: a range Q1..Q2 steps by 20."""
    out = []
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        name, sep, q = item.partition(":")
        if sep and ".." in q:
            lo, _, hi = q.partition("..")
            if not (lo.isdigit() and hi.isdigit() and int(lo) <= int(hi)):
                raise ValueError(f"a quality range is Q1..Q2 with integers Q1 <= Q2, got {item!r}")
            out += [f"{name}:{v}" for v in range(int(lo), int(hi) + 1, 20)]
        else:
            out.append(item)
    for c in out:
        parse_codec(c)  # refuses unknown codecs, listing the valid ones
    return out


@torch.inference_mode()
def image_codec_point(cloud: nn.Module, dataset: SegDataset, codec: str, limit: int | None = None,
                      on_frame: Callable[[], None] | None = None) -> dict:
    """The cloud model on frames sent with an image codec: mIoU of the decoded frames, bytes per frame, bpp."""
    cloud.eval()
    n = len(dataset) if limit is None else min(limit, len(dataset))
    cm = ConfusionMatrix(dataset.classes.num_classes, dataset.classes.ignore_index)
    sizes, heap = [], HeapTrimmer()
    for i in range(n):
        s = dataset[i]
        data = encode_frame(s.image, codec)
        sizes.append(len(data))
        logits = cloud(to_tensor([decode_frame(data)]))  # (1, S, H, W)
        cm.update(logits.argmax(1), torch.from_numpy(s.label[None].astype(np.int64)))
        heap.tick()
        if on_frame:
            on_frame()
    h, w = dataset[0].image.shape[:2]
    mean_bytes = float(np.mean(sizes))
    return {"method": parse_codec(codec).name, "setting": codec, "miou": cm.miou(), "bytes_per_frame": mean_bytes,
            "bpp": mean_bytes * 8 / (h * w), "frames": n}


@torch.inference_mode()
def codec_latency(device_model: nn.Module, codec: FeatureCodec, cloud_model: nn.Module, images: Sequence[np.ndarray],
                  warmup: int = 2) -> dict:
    """Median ms per frame, on the threads torch has now: the device model alone vs the device model keeping its
    split features plus the feature payload (SE, HE, integer HD, range coding, container); the cloud model on the
    frame vs the cloud's feature path (bitstream parse, range decoding, integer HD, joint decoder)."""
    plain = LiveModel(device_model)
    model_step, payload = feature_steps(device_model, codec)
    segmenter = ModelSegmenter(cloud_model, codec)
    times: dict[str, list[float]] = {"device_ms": [], "device_with_encode_ms": [], "cloud_ms": [], "cloud_decode_ms": []}

    def timed(key: str, fn: Callable[[], object], keep: bool) -> object:
        t0 = time.perf_counter()
        result = fn()
        if keep:
            times[key].append((time.perf_counter() - t0) * 1e3)
        return result

    sizes: list[int] = []
    warm = list(images[:warmup])  # untimed first passes (oneDNN kernel choice, allocator pools)
    for i, image in enumerate([*warm, *images]):
        keep = i >= len(warm)
        timed("device_ms", lambda im=image: plain.run(im, 0), keep)
        request = timed("device_with_encode_ms", lambda im=image: payload.build(im, 0, model_step.run(im, 0), 0), keep)
        if keep:
            sizes.append(len(request.payload))
        timed("cloud_ms", lambda im=image: cloud_model(to_tensor([im])), keep)
        timed("cloud_decode_ms", lambda r=request: segmenter.predict([r]), keep)
    med = {k: float(np.median(v)) for k, v in times.items()}
    med["encode_overhead"] = med["device_with_encode_ms"] / med["device_ms"] - 1.0
    med["decode_share_of_cloud"] = med["cloud_decode_ms"] / med["cloud_ms"]
    med["frames"] = len(images)
    med["bytes_per_frame"] = float(np.mean(sizes))
    return med
