"""Analysis and synthesis transforms of the source codec (JD Fig. 2; Ballé et al. 2018).

Notation of the paper: DWConv(h x h, F, G, rho=2) is a grouped strided conv, DWUpConv the grouped
strided transposed conv, Conv/UpConv their regular counterparts. Every stride-2 layer here is
5x5 with padding 2, so a side of n becomes ceil(n / 2); transposed layers are told their target
size, so odd feature maps round-trip exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def down_sizes(hw: tuple[int, int], n: int) -> list[tuple[int, int]]:
    """[hw, after one stride-2 layer, ...]: n + 1 sizes (k=5, p=2, s=2 maps n to ceil(n / 2))."""
    sizes = [tuple(int(v) for v in hw)]
    for _ in range(n):
        sizes.append(tuple((v + 1) // 2 for v in sizes[-1]))
    return sizes


def common_groups(groups: int, *channels: int) -> int:
    """The largest G <= groups dividing every channel count (a grouped conv needs both sides divisible)."""
    g = groups
    for c in channels:
        g = math.gcd(g, c)
    return max(1, g)


def dw_conv(cin: int, cout: int, groups: int) -> nn.Conv2d:
    """DWConv(5x5, F=cout, G, rho=2): a cheap strided reduction of wide split features."""
    return nn.Conv2d(cin, cout, 5, 2, 2, groups=common_groups(groups, cin, cout))


def dw_up_conv(cin: int, cout: int, groups: int) -> nn.ConvTranspose2d:
    """DWUpConv(5x5, F=cout, G, rho=2); call with `output_size` to pick the exact target size."""
    return nn.ConvTranspose2d(cin, cout, 5, 2, 2, groups=common_groups(groups, cin, cout))


def conv(cin: int, cout: int, k: int = 3) -> nn.Conv2d:
    """Conv(k x k, F): the regular conv that mixes what the grouped convs keep apart."""
    return nn.Conv2d(cin, cout, k, 1, k // 2)


class SourceEncoder(nn.Module):
    """SE: z (N, C_z, H, W) -> r (N, C_r, ceil(H / 2^n), ...) with n x [DWConv stride 2, ReLU, Conv 3x3, ReLU],
    then a linear Conv 3x3 to the latent channels (r is unbounded: the entropy model sets its cost)."""

    def __init__(self, cin: int, hidden: int, latent: int, groups: int, downsamples: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(downsamples):
            layers += [dw_conv(cin if i == 0 else hidden, hidden, groups), nn.ReLU(inplace=True), conv(hidden, hidden), nn.ReLU(inplace=True)]
        layers.append(conv(hidden if downsamples else cin, latent))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class SourceDecoder(nn.Module):
    """SD (Ahuja et al., the SD+D baseline): r_hat -> z_hat, SE mirrored with DWUpConv stride 2."""

    def __init__(self, latent: int, hidden: int, cout: int, groups: int, upsamples: int) -> None:
        super().__init__()
        self.inp = conv(latent, hidden)
        self.ups = nn.ModuleList([dw_up_conv(hidden, hidden, groups) for _ in range(upsamples)])
        self.mix = nn.ModuleList([conv(hidden, hidden) for _ in range(upsamples)])
        self.out = conv(hidden, cout)
        self.act = nn.ReLU(inplace=True)

    def forward(self, r_hat: torch.Tensor, sizes: list[tuple[int, int]]) -> torch.Tensor:
        """`sizes`: the spatial sizes to pass through on the way up, ending at z's (down_sizes reversed)."""
        y = self.act(self.inp(r_hat))  # (N, F, h_r, w_r)
        for up, mix, size in zip(self.ups, self.mix, sizes, strict=True):
            y = self.act(mix(self.act(up(y, output_size=size))))  # (N, F, 2 h, 2 w) cropped to `size`
        return self.out(y)  # (N, C_z, H, W)


class HyperEncoder(nn.Module):
    """HE: |r| -> h (Ballé 2018 feeds the magnitude: the prior on r is zero-mean, only the spread matters)."""

    def __init__(self, latent: int, hyper: int, downsamples: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv(latent, hyper)]
        for _ in range(downsamples):
            layers += [nn.ReLU(inplace=True), nn.Conv2d(hyper, hyper, 5, 2, 2)]
        self.net = nn.Sequential(*layers)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.net(torch.abs(r))  # (N, C_h, h_r / 2^n, w_r / 2^n)


class HyperDecoder(nn.Module):
    """HD: h_hat -> sigma >= 0 (then lower-bounded by the entropy model), ReLU after every layer.

    Layers are a flat list so that `integer.integer_scales` can replay them in exact integer
    arithmetic: the byte path never uses the float result, which may differ between machines."""

    def __init__(self, hyper: int, latent: int, upsamples: int) -> None:
        super().__init__()
        ups: list[nn.Module] = [nn.ConvTranspose2d(hyper, hyper, 5, 2, 2) for _ in range(upsamples)]
        self.layers = nn.ModuleList([*ups, conv(hyper, hyper), conv(hyper, latent)])

    def forward(self, h_hat: torch.Tensor, sizes: list[tuple[int, int]]) -> torch.Tensor:
        """`sizes`: target sizes of the transposed layers, ending at r's."""
        y = h_hat
        for i, layer in enumerate(self.layers):
            y = layer(y, output_size=sizes[i]) if isinstance(layer, nn.ConvTranspose2d) else layer(y)
            y = torch.relu(y)
        return y  # (N, C_r, h_r, w_r)
