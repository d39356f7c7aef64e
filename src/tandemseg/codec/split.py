"""Where the device encoder is cut: resolve a stage from `feature_info` and take z = E(x) there (JD sec. 3.1).

Everything goes through timm's contract (`feature_info`, `encoder.forward_intermediates`), so any
device encoder that honours it can be split; no stage name is hard-coded.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from tandemseg.codec.config import CodecConfig
from tandemseg.codec.errors import CodecError


def resolve_split(feature_info: list[dict], split: str | int) -> int:
    """Index into `feature_info` of a stage given as an index ('2', -1), a module name ('stages.stage3')
    or its last component ('stage3')."""
    names = [f["module"] for f in feature_info]
    text = str(split).strip()
    try:
        index = int(text)
    except ValueError:
        hits = [i for i, n in enumerate(names) if text in (n, n.rsplit(".", 1)[-1])]
        if len(hits) != 1:
            raise CodecError(f"split stage {text!r} is not one of the device's stages {names}") from None
        return hits[0]
    if not -len(names) <= index < len(names):
        raise CodecError(f"split index {index} is out of range for the device's {len(names)} stages {names}")
    return index % len(names)


def resolve_config(cfg: CodecConfig, feature_info: list[dict]) -> CodecConfig:
    """A copy of `cfg` with the split stage's index, channels and reduction filled in from `feature_info`."""
    index = resolve_split(feature_info, cfg.split)
    info = feature_info[index]
    return replace(cfg, split_index=index, in_channels=int(info["num_chs"]), in_reduction=int(info["reduction"]))


def device_input(device: nn.Module, frame: torch.Tensor) -> torch.Tensor:
    """The encoder's input for a [0,1] frame (N,3,H,W): normalised and downsampled as the device sees it."""
    return device.encoder_input(frame)


def split_features(device: nn.Module, frame: torch.Tensor, index: int) -> torch.Tensor:
    """z = E(x): the device encoder's output at stage `index`, stopping there (nothing past the split runs)."""
    _, feats = device.encoder.forward_intermediates(device_input(device, frame), indices=[index], stop_early=True)
    return feats[0]  # (N, C_z, H / reduction, W / reduction)
