"""Training ACDC's CFE (sec. 3.2.3) on frozen device and cloud models.

The device and cloud networks never change while the CFE learns, so their outputs are collected once
(`collect_fusion_set`): every training frame goes through the one runtime (policy `all`, the in-process link,
a real `CloudService` asked for its probabilities as an upload would ask), and the set keeps what the CFE
sees on a device: the device's coarse probabilities, the frame, and the cloud's probabilities exactly as the
reply carries them (4-bit, at the cloud decoder's resolution). Training then costs the CFE's own
layers only.

Loss (the paper gives none; our reading): cross-entropy at full resolution of both outputs the same module
gives, summed, unweighted: the refined map (a frame the cloud never saw) over the pixels M_u recomputes (the
masked sites' pixels; every pixel for the dense U-Net), and the fused map (an answered frame) over every pixel,
its gradient stopped at the refinement. With the fusion's gradient reaching M_u and the refined loss over every
pixel, a first version's refined training loss stayed flat. The weighting was chosen on train frames the CFE did
not train on (train[:300] -> train[300:], never val; scripts/fusion_design_checks.py): ENet class weights (as the
device was trained) gave +0.6 pp refined against +1.7 pp unweighted, and 65.1 against 66.8 fused.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from tandemseg.cloud.service import CloudService, ModelSegmenter
from tandemseg.data.base import SegDataset
from tandemseg.device.budget import FixedSelection
from tandemseg.device.link import InProcessLink
from tandemseg.device.policies import make_policy
from tandemseg.device.runtime import DeviceRuntime
from tandemseg.device.steps import CloudLabel, DeviceOutput
from tandemseg.errors import DataError
from tandemseg.eval.cache import through_runtime
from tandemseg.fusion.engine import CollaborativeFusion
from tandemseg.train.trainer import adam_cosine, class_weights
from tandemseg.wire.messages import CloudReply
from tandemseg.wire.payload import unpack_probs


@dataclass
class FusionSet:
    """What the CFE sees of N frames (device and cloud frozen)."""

    probs: torch.Tensor  # (N, C, h, w) float16 device coarse probabilities
    cloud: torch.Tensor  # (N, C, hc, wc) float16 the cloud's probabilities as the reply carries them
    images: torch.Tensor  # (N, H, W, 3) uint8 frames
    labels: torch.Tensor  # (N, H, W) int64 ground truth
    reply_prob_bytes: np.ndarray  # (N,) bytes the probabilities add to each reply

    def __len__(self) -> int:
        return self.probs.shape[0]


class _KeepReply(CloudLabel):
    """A fuse step that asks for the cloud's probabilities and keeps the last reply (collection only)."""

    wants_cloud_probs = True

    def __init__(self) -> None:
        self.reply: CloudReply | None = None

    def fuse(self, device: DeviceOutput, cloud_label: np.ndarray, reply: CloudReply) -> np.ndarray:
        self.reply = reply
        return super().fuse(device, cloud_label, reply)


def collect_fusion_set(dataset: SegDataset, device_model: nn.Module, cloud_model: nn.Module, limit: int | None = None,
                       on_frame: Callable[[], None] | None = None) -> FusionSet:
    """Every frame through the runtime with every frame uploaded; the replies carry the cloud's probabilities."""
    keep = _KeepReply()
    link = InProcessLink(CloudService(ModelSegmenter(cloud_model), dataset.classes))
    runtime = DeviceRuntime(device_model, make_policy("all"), FixedSelection([]), link, fuse=keep)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    rows: dict[str, list] = {"probs": [], "cloud": [], "images": [], "labels": [], "bytes": []}
    for i, s, handle, result in through_runtime(dataset, runtime, n):
        reply = keep.reply
        if result.provenance != "cloud" or reply is None or reply.probs is None:
            raise RuntimeError(f"frame {i}: the in-process cloud sent no probabilities ({result.provenance})")
        rows["probs"].append(handle.device.probs.half())
        rows["cloud"].append(torch.from_numpy(unpack_probs(reply.probs, reply.probs_shape)).half())
        rows["images"].append(torch.from_numpy(np.array(s.image)))  # a copy: dataset frames may be read-only
        rows["labels"].append(torch.from_numpy(s.label.astype(np.int64)))
        rows["bytes"].append(len(reply.probs))
        if on_frame:
            on_frame()
    runtime.close()
    return FusionSet(torch.stack(rows["probs"]), torch.stack(rows["cloud"]), torch.stack(rows["images"]),
                     torch.stack(rows["labels"]), np.array(rows["bytes"]))


@dataclass
class FusionTrainConfig:
    epochs: int = 8  # passes over the training frames
    batch_size: int = 4
    lr: float = 2e-3  # Adam; cosine decay to lr / 100
    weight_decay: float = 1e-4
    flip: bool = True  # mirror every batch with probability 1/2 (all inputs and the labels together)
    class_weighting: bool = False  # ENet weights of the training labels in both losses (lower on held-out train frames)
    seed: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def batch_inputs(data: FusionSet, idx: torch.Tensor, flip: bool = False) -> tuple[torch.Tensor, ...]:
    """(device probs, image in [0, 1], cloud probs, labels) of frames `idx`, mirrored when `flip`."""
    probs, cloud = data.probs[idx].float(), data.cloud[idx].float()  # (B, C, h, w), (B, C, hc, wc)
    image = data.images[idx].permute(0, 3, 1, 2).float().div(255.0)  # (B, 3, H, W)
    labels = data.labels[idx]  # (B, H, W)
    if flip:
        probs, cloud, image, labels = (t.flip(-1) for t in (probs, cloud, image, labels))
    return probs, image, cloud, labels


def train_fusion(fusion: CollaborativeFusion, train: FusionSet, cfg: FusionTrainConfig, ignore_index: int,
                 on_step: Callable[[], None] | None = None, on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """The CFE's refinement and fusion on the collected frames (module docstring); one record per epoch."""
    torch.manual_seed(cfg.seed)
    num_classes = fusion.cfg.num_classes
    weight = class_weights([lab.numpy() for lab in train.labels], num_classes, ignore_index) if cfg.class_weighting else None
    opt, sched, steps = adam_cosine(fusion.parameters(), cfg.lr, cfg.epochs, len(train), cfg.batch_size, cfg.weight_decay)
    history = []
    for epoch in range(1, cfg.epochs + 1):
        rng = np.random.default_rng([cfg.seed, epoch])
        order = rng.permutation(len(train))
        fusion.train()
        sums = {"loss_local": 0.0, "loss_fused": 0.0}
        t0 = time.perf_counter()
        for b in range(steps):
            idx = torch.from_numpy(order[b * cfg.batch_size:(b + 1) * cfg.batch_size])
            probs, image, cloud, labels = batch_inputs(train, idx, cfg.flip and bool(rng.random() < 0.5))
            local, fused, changed = fusion.both(probs, image, cloud, detach=True)  # (B, C, H, W) x 2, (B, H, W)
            loss_local = F.cross_entropy(local, labels.masked_fill(~changed, ignore_index), weight=weight, ignore_index=ignore_index)
            loss_fused = F.cross_entropy(fused, labels, weight=weight, ignore_index=ignore_index)
            opt.zero_grad(set_to_none=True)
            (loss_local + loss_fused).backward()
            opt.step()
            sched.step()
            sums["loss_local"] += loss_local.item() / steps
            sums["loss_fused"] += loss_fused.item() / steps
            if on_step:
                on_step()
        history.append({"epoch": epoch, **sums, "seconds": time.perf_counter() - t0})
        if on_epoch:
            on_epoch(history[-1])
    fusion.eval()
    return history


@torch.inference_mode()
def fusion_confusions(fusion: CollaborativeFusion | None, data: FusionSet, num_classes: int, ignore_index: int,
                      batch_size: int = 4) -> dict[str, np.ndarray]:
    """Per-frame (N, C, C) confusion matrices of the device's map, the cloud's map and, with a CFE, its refined
    (no cloud) and fused maps: the figures `fusion train` reports."""
    out: dict[str, list[np.ndarray]] = {"device": [], "cloud": [], "refined": [], "fused": []}
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)))
        probs, image, cloud, labels = batch_inputs(data, idx)
        size = labels.shape[-2:]
        maps = {"device": F.interpolate(probs.clamp_min(1e-12).log(), size=size, mode="bilinear", align_corners=False),
                "cloud": F.interpolate(cloud, size=size, mode="bilinear", align_corners=False)}
        if fusion is not None:
            maps["refined"], maps["fused"], _ = fusion.both(probs, image, cloud)
        for key, logits in maps.items():
            pred = logits.argmax(1)  # (B, H, W)
            for p, y in zip(pred, labels, strict=True):
                out[key].append(frame_confusion(p, y, num_classes, ignore_index))
    return {k: np.stack(v) for k, v in out.items() if v}


def frame_confusion(pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int) -> np.ndarray:
    """(H, W) prediction and label -> (C, C) int64, rows = label."""
    keep = label != ignore_index
    idx = label[keep] * num_classes + pred[keep]
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes).numpy()


def save_fusion_set(data: FusionSet, path: Path) -> None:
    """safetensors (never pickle: a cache directory may come from anywhere); written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"probs": data.probs.contiguous(), "cloud": data.cloud.contiguous(), "images": data.images.contiguous(),
               "labels": data.labels.to(torch.uint8).contiguous(), "reply_prob_bytes": torch.from_numpy(data.reply_prob_bytes)}, str(tmp))
    tmp.replace(path)


def load_fusion_set(path: Path) -> FusionSet:
    try:
        t = load_file(str(path))
        labels = t["labels"].long()
        return FusionSet(t["probs"], t["cloud"], t["images"], labels, t["reply_prob_bytes"].numpy())
    except (SafetensorError, KeyError, OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable fusion cache ({str(e)[:120]}); delete it and it is rebuilt") from None


def load_or_collect(dataset: SegDataset, device_model: nn.Module, cloud_model: nn.Module, limit: int | None,
                    cache_dir: Path | None, identity: dict, on_frame: Callable[[], None] | None = None) -> FusionSet:
    """The fusion set of this (data, split, checkpoints) from `cache_dir` when there, else collected and saved."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    key = hashlib.sha1(json.dumps({**identity, "frames": n, "v": 2}, sort_keys=True).encode()).hexdigest()[:16]  # 2: 4-bit replies
    path = cache_dir / f"fusion-{key}.safetensors" if cache_dir else None
    if path is not None and path.is_file():
        return load_fusion_set(path)
    data = collect_fusion_set(dataset, device_model, cloud_model, limit, on_frame)
    if path is not None:
        save_fusion_set(data, path)
    return data
