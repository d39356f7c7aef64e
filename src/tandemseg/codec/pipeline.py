"""The device model cut at its split stage plus the codec: frames in, logits and likelihoods out.

The device encoder is frozen by default (its weights define the device checkpoint hash that
bitstreams carry); `freeze_device=False` fine-tunes it with the codec, which then needs its own
device checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from tandemseg.codec.model import CodecOutput, CodedFeatures, FeatureCodec
from tandemseg.codec.split import split_features


class SplitCodec(nn.Module):
    """frame (N, 3, H, W) in [0, 1] -> z = E(x) at the split -> codec -> logits at the frame size."""

    def __init__(self, device: nn.Module, codec: FeatureCodec, freeze_device: bool = True) -> None:
        super().__init__()
        self.device, self.codec, self.freeze_device = device, codec, freeze_device
        if freeze_device:
            device.requires_grad_(False)

    def train(self, mode: bool = True) -> SplitCodec:
        super().train(mode)
        if self.freeze_device:
            self.device.eval()  # a frozen encoder keeps its BN statistics, or the hash would not describe it
        return self

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """z (N, C_z, H_z, W_z) at the codec's split stage."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_device):
            return split_features(self.device, frames, self.codec.cfg.split_index)

    def forward(self, frames: torch.Tensor) -> CodecOutput:
        return self.codec(self.features(frames), tuple(frames.shape[-2:]))

    @torch.no_grad()
    def compress(self, frames: torch.Tensor) -> list[CodedFeatures]:
        """Device side: frames -> one pair of bitstreams per frame."""
        return self.codec.compress(self.features(frames))
