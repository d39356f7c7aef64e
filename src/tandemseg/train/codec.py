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

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from tandemseg.codec.loss import rd_loss
from tandemseg.codec.model import FeatureCodec
from tandemseg.eval.codec import FeatureSet, evaluate_codec
from tandemseg.train.trainer import adam_cosine


@dataclass
class CodecTrainConfig:
    epochs: int = 60  # passes over the training frames (each frame and its mirror count as two items)
    batch_size: int = 8
    lr: float = 1e-3  # Adam; cosine decay to lr / 100
    clip: float = 1.0  # gradient-norm clip (the paper's supplement, Table 3)
    seed: int = 0
    eval_every: int = 10  # epochs between validation passes (real bitstreams)
    mirror: bool = True  # also train on the mirror image of every frame (its own features, computed once)


def train_codec(codec: FeatureCodec, train: FeatureSet, val: FeatureSet | None, cfg: CodecTrainConfig,
                num_classes: int, ignore_index: int, on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Eq. 3 on the cached features for `cfg.epochs` epochs; returns one record per epoch (loss, bpp, ce, and
    the real-bitstream validation figures every `eval_every` epochs and at the end)."""
    torch.manual_seed(cfg.seed)
    params = [p for p in codec.parameters() if p.requires_grad]
    opt, sched, steps = adam_cosine(params, cfg.lr, cfg.epochs, len(train), cfg.batch_size)
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
