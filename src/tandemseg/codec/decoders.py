"""Cloud-side decoders: JD (the paper), SD+D (Ahuja et al., the baseline) and the no-compression head.

All end in the same DeepLabV3-style head: ASPP -> 1x1 projection (the pointwise conv over the
concatenated ASPP output, Fig. 7's text) -> 1x1 classifier -> bilinear upsampling to the frame.
"""

from __future__ import annotations

import torch
from torch import nn

from tandemseg.codec.aspp import RepASPP
from tandemseg.codec.layers import SourceDecoder, dw_up_conv
from tandemseg.models.blocks import resize


class ASPPHead(nn.Module):
    """ASPP(F, d) -> Conv1x1(F)+BN+ReLU -> Conv1x1(S) -> logits upsampled to `out_size`."""

    def __init__(self, cin: int, channels: int, num_classes: int, dilations: tuple[int, ...], K: int, overparam: bool) -> None:
        super().__init__()
        self.aspp = RepASPP(cin, channels, dilations, K, overparam)
        self.project = nn.Sequential(nn.Conv2d(self.aspp.out_channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        y = self.project(self.aspp(x))  # (N, F, h, w)
        return resize(self.classifier(y), out_size)  # (N, S, H, W)


class JointDecoder(nn.Module):
    """JD (Fig. 3): r_hat -> DWUpConv(5x5, F_up, G, rho=2)+BN+ReLU -> ASPP head -> class logits.

    No source reconstruction and no reconstruction loss: r_hat goes straight to the task (sec. 3.2)."""

    def __init__(self, latent: int, up_channels: int, up_groups: int, channels: int, num_classes: int,
                 dilations: tuple[int, ...], K: int, overparam: bool) -> None:
        super().__init__()
        self.up = dw_up_conv(latent, up_channels, up_groups)
        self.up_bn = nn.BatchNorm2d(up_channels)
        self.head = ASPPHead(up_channels, channels, num_classes, dilations, K, overparam)

    def forward(self, r_hat: torch.Tensor, sizes: list[tuple[int, int]], out_size: tuple[int, int]) -> torch.Tensor:
        """`sizes`: the codec's size chain from r up to z; the single DWUpConv goes one step up it."""
        y = torch.relu(self.up_bn(self.up(r_hat, output_size=sizes[0])))  # (N, F_up, 2 h_r, 2 w_r)
        return self.head(y, out_size)

    def reparameterize(self) -> None:
        self.head.aspp.reparameterize()


class SourceTaskDecoder(nn.Module):
    """SD+D (Ahuja et al. 2023, JD Fig. 1c / supplement Fig. 9): SD reconstructs z_hat, then a separate
    task decoder D runs on it. D is a DeepLabV3 head (plain ASPP, like the paper's D), not the device's
    own decoder: that one needs the /4 and /8 skips, which never cross the split."""

    def __init__(self, latent: int, hidden: int, cz: int, groups: int, upsamples: int, channels: int,
                 num_classes: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.sd = SourceDecoder(latent, hidden, cz, groups, upsamples)
        self.d = ASPPHead(cz, channels, num_classes, dilations, K=1, overparam=False)

    def forward(self, r_hat: torch.Tensor, sizes: list[tuple[int, int]], out_size: tuple[int, int]) -> torch.Tensor:
        return self.d(self.sd(r_hat, sizes), out_size)  # z_hat (N, C_z, H_z, W_z) -> (N, S, H, W)

    def reparameterize(self) -> None:
        self.d.aspp.reparameterize()


class FloatHead(nn.Module):
    """No compression: the float split features z into D's head (the upper bound of the split route)."""

    def __init__(self, cz: int, channels: int, num_classes: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.d = ASPPHead(cz, channels, num_classes, dilations, K=1, overparam=False)

    def forward(self, z: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        return self.d(z, out_size)

    def reparameterize(self) -> None:
        self.d.aspp.reparameterize()
