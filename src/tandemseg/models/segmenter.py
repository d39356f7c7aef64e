"""What the device and cloud segmenters share: an encoder with timm's feature contract and a decoder over its stages.

A subclass says how a [0,1] frame becomes the encoder's input (`encoder_input`: normalise, and for the
device downsample, ACDC eq. 4) and how stage outputs become logits (`decode`); the feature contract
(`feature_info`, `forward_intermediates`), the coarse and full-resolution forwards are written once here.
"""

from __future__ import annotations

import torch
from torch import nn

from tandemseg.models.blocks import resize


class StagedSegmenter(nn.Module):
    encoder: nn.Module
    feature_info: list[dict]

    def encoder_input(self, frame: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    @property
    def stage_names(self) -> list[str]:
        return [f["module"] for f in self.feature_info]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every stage output, from an input already prepared by `encoder_input`."""
        return self.encoder.forward_intermediates(x)[1]

    def forward_intermediates(
        self, frame: torch.Tensor, indices: list[int] | None = None, stop_early: bool = False,
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """timm's contract on a [0,1] frame: (full-resolution logits, [stage outputs at `indices`]).

        With `stop_early` the encoder stops after the last requested stage and the logits are None.
        """
        x = self.encoder_input(frame)
        if stop_early:
            return None, self.encoder.forward_intermediates(x, indices, stop_early=True)[1]
        feats = self.forward_features(x)
        wanted = range(len(feats)) if indices is None else indices
        return resize(self.decode(feats), frame.shape[-2:]), [feats[i] for i in wanted]

    def forward_coarse(self, frame: torch.Tensor) -> torch.Tensor:
        """Logits at the decoder's own resolution, before upsampling (what the model actually computes)."""
        return self.decode(self.forward_features(self.encoder_input(frame)))

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        """[0,1] frame (N, 3, H, W) -> logits (N, C, H, W) at full resolution."""
        return resize(self.forward_coarse(frame), frame.shape[-2:])
