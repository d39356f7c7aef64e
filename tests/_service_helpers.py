"""Tiny models, tokens and uploads shared by the service tests (test_service_http, test_device_client, test_ray_serve)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tandemseg.data.classes import CAMVID
from tandemseg.models.checkpoint import save_checkpoint
from tandemseg.models.registry import build_model
from tandemseg.wire.messages import UploadRequest
from tandemseg.wire.payload import encode_frame, pack_probs

C = CAMVID.num_classes
TOKENS = "dev1:token-one-1111,dev2:token-two-2222"
TOK1, TOK2 = "token-one-1111", "token-two-2222"
H, W = 32, 48


def tiny_cloud(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    stages = (("layer1", 8, 1, 1, 1), ("layer2", 8, 1, 2, 1), ("layer3", 8, 1, 2, 1), ("layer4", 8, 1, 1, 2))
    return build_model("cloud", encoder="resnet", num_classes=C, stem_channels=8, stages=stages, aspp_channels=8, decoder_channels=8, skip_channels=8).eval()


def tiny_device(seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    stages = (("stage1", 2, 8, 1, 2, 1), ("stage2", 2, 8, 1, 2, 1), ("stage3", 2, 8, 1, 2, 1), ("stage4", 2, 8, 1, 1, 2))
    return build_model("device", encoder="mobilenetv2", num_classes=C, stem_channels=8, stages=stages, head_channels=8, skip_channels=8).eval()


def save_tiny(folder: Path, kind: str) -> Path:
    model = tiny_cloud() if kind == "cloud" else tiny_device()
    return save_checkpoint(folder, model, kind, CAMVID, data="synthetic", recipe="tests: tiny random model")


def frame(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def upload(device: str = "dev1", frame_id: int = 0, probs: bool = True, seed: int = 0, h: int = H, w: int = W, codec: str = "png") -> UploadRequest:
    req = UploadRequest(device, frame_id, encode_frame(frame(seed, h, w), codec), codec, h, w)
    if probs:
        p = np.random.default_rng(seed + 1).dirichlet(np.ones(C), size=(h // 8, w // 8)).transpose(2, 0, 1).astype(np.float32)
        req.device_probs, req.device_probs_shape = pack_probs(p)
    return req
