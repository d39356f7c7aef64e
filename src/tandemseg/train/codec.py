"""Training a feature codec on a frozen device encoder (JD sec. 3.3, eq. 3), and measuring it on real bytes.

The device encoder is frozen (its weights fix the device hash every bitstream carries), so its split
features z = E(x) of every training frame are computed once, for the frame and its mirror image
(`FeatureSet`), and the codec trains on those: an epoch costs the codec's own layers only. The loss is
eq. 3 as rate + lambda x CE, rate from the likelihoods of r and h under additive uniform noise; the
evaluation uses true rounding and the real range-coded bitstreams (`FeatureCodec.compress`), so
`bytes_per_frame` and `bpp` are what would cross the wire.

Reading chosen where the paper is silent: CE is computed on logits bilinearly upsampled to the label
size (the device runs at half resolution, the labels are full-size), and bpp divides by the pixels of
the full-resolution input frame (what an image codec would code), not of the device's downsampled input.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tandemseg.codec.loss import rd_loss
from tandemseg.codec.model import FeatureCodec
from tandemseg.codec.split import split_features
from tandemseg.data.base import SegDataset
from tandemseg.data.tensors import to_tensor
from tandemseg.eval.metrics import ConfusionMatrix
from tandemseg.heap import HeapTrimmer


@dataclass
class CodecTrainConfig:
    epochs: int = 60  # passes over the training frames (each frame and its mirror count as two items)
    batch_size: int = 8
    lr: float = 1e-3  # Adam; cosine decay to lr / 100
    clip: float = 1.0  # gradient-norm clip (the paper's supplement, Table 3)
    seed: int = 0
    eval_every: int = 10  # epochs between validation passes (real bitstreams)
    mirror: bool = True  # also train on the mirror image of every frame (its own features, computed once)


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
    if n == 0:
        raise ValueError("the dataset has no frames")
    frame_hw = tuple(int(v) for v in labels[0].shape)
    return FeatureSet(torch.stack(zs), torch.stack(labels), frame_hw)


def train_codec(codec: FeatureCodec, train: FeatureSet, val: FeatureSet | None, cfg: CodecTrainConfig,
                num_classes: int, ignore_index: int, on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Eq. 3 on the cached features for `cfg.epochs` epochs; returns one record per epoch (loss, bpp, ce, and
    the real-bitstream validation figures every `eval_every` epochs and at the end)."""
    torch.manual_seed(cfg.seed)
    params = [p for p in codec.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    steps = max(1, math.ceil(len(train) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps, eta_min=cfg.lr / 100)
    history = []
    for epoch in range(1, cfg.epochs + 1):
        rng = np.random.default_rng([cfg.seed, epoch])
        order = rng.permutation(len(train))
        codec.train()
        sums = {"loss": 0.0, "bpp": 0.0, "ce": 0.0}
        t0 = time.perf_counter()
        for b in range(steps):
            idx = torch.from_numpy(order[b * cfg.batch_size:(b + 1) * cfg.batch_size])
            out = codec(train.z[idx], train.frame_hw)  # logits (B, S, H, W)
            res = rd_loss(out, train.labels[idx], codec.cfg.lmbda, ignore_index)
            opt.zero_grad(set_to_none=True)
            res.loss.backward()
            if cfg.clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.clip)
            opt.step()
            sched.step()
            for k, v in res.as_floats().items():
                sums[k] += v / steps
        record = {"epoch": epoch, **{f"train_{k}": v for k, v in sums.items()}, "epoch_s": time.perf_counter() - t0}
        if val is not None and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
            record.update({f"val_{k}": v for k, v in evaluate_codec(codec, val, num_classes, ignore_index).items()})
        history.append(record)
        if on_epoch:
            on_epoch(record)
    codec.eval()
    return history


@torch.inference_mode()
def evaluate_codec(codec: FeatureCodec, features: FeatureSet, num_classes: int, ignore_index: int,
                   on_frame: Callable[[], None] | None = None) -> dict:
    """mIoU from the decoded bitstreams (true rounding, range coding, exact decode), real bytes per frame, bpp on the
    input frame's pixels, and the median codec-side encode / decode ms (split features given)."""
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
            logits = codec.decode(r_hat, tuple(z.shape[-2:]), (h, w))
            sizes.append(coded[0].num_bytes)
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
            "encode_ms": float(np.median(enc_ms)), "decode_ms": float(np.median(dec_ms))}
