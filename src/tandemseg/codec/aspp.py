"""ASPP with training-time over-parameterisation and its re-parameterisation (JD sec. 3.3, Fig. 4).

Fig. 4a: each dilated subblock holds K parallel DConv(3x3, F, d)+BN branches plus one parallel
pointwise Conv(1x1, F)+BN branch; the K + 1 outputs are summed, then ReLU. Fig. 4b: the pointwise
subblocks (top: the 1x1 branch; bottom: the image-pooling branch) hold K parallel 1x1 branches,
summed, then ReLU. All branches are linear up to the sum, so in eval mode (BN = affine with running
statistics) `reparameterize()` folds them into one conv with bias: the plain ASPP of Fig. 3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(W', b') with conv'(x) = BN(conv(x)) in eval mode: W' = W gamma / s, b' = beta + (b - mu) gamma / s."""
    w = conv.weight.detach()
    b = conv.bias.detach() if conv.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    if bn is None:
        return w.clone(), b.clone()
    s = torch.sqrt(bn.running_var + bn.eps)
    gain = bn.weight.detach() / s  # (F,)
    return w * gain.view(-1, 1, 1, 1), bn.bias.detach() + (b - bn.running_mean) * gain


def center_pad(w: torch.Tensor, k: int) -> torch.Tensor:
    """A 1x1 kernel as the centre tap of a k x k one: with 'same' padding (dilated or not) the centre tap
    reads the very pixel a 1x1 conv reads."""
    pad = (k - 1) // 2
    return F.pad(w, (pad, pad, pad, pad))


def _branch(cin: int, cout: int, k: int, dilation: int, norm: bool) -> nn.Sequential:
    pad = dilation * (k - 1) // 2
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, 1, pad, dilation=dilation, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(cout))
    return nn.Sequential(*layers)


class RepConvBlock(nn.Module):
    """sum_k conv_k+BN_k (k = 1..K) [+ conv1x1+BN] -> ReLU; after `reparameterize()`: conv(bias) -> ReLU.

    `norm=False` drops BN (the image-pooling subblock: BN over a 1x1 map fails for a batch of one)."""

    def __init__(self, cin: int, cout: int, k: int, dilation: int, K: int, pointwise: bool,
                 norm: bool = True, deploy: bool = False) -> None:
        super().__init__()
        self.cin, self.cout, self.k, self.dilation = cin, cout, k, dilation
        self.fused: nn.Conv2d | None = None
        self.branches = nn.ModuleList()
        self.pointwise: nn.Sequential | None = None
        if deploy:
            self.fused = self._plain_conv()
            return
        self.branches.extend(_branch(cin, cout, k, dilation, norm) for _ in range(K))
        if pointwise and k > 1:
            self.pointwise = _branch(cin, cout, 1, 1, norm)

    def _plain_conv(self) -> nn.Conv2d:
        pad = self.dilation * (self.k - 1) // 2
        return nn.Conv2d(self.cin, self.cout, self.k, 1, pad, dilation=self.dilation, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return torch.relu(self.fused(x))
        y = sum(b(x) for b in self.branches)  # (N, F, h, w): K parallel branches, summed before the ReLU
        if self.pointwise is not None:
            y = y + self.pointwise(x)
        return torch.relu(y)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold every branch (eval-mode BN) into one conv with bias; idempotent."""
        if self.fused is not None:
            return
        parts = [fold_conv_bn(b[0], b[1] if len(b) > 1 else None) for b in self.branches]
        if self.pointwise is not None:
            pw, pb = fold_conv_bn(self.pointwise[0], self.pointwise[1] if len(self.pointwise) > 1 else None)
            parts.append((center_pad(pw, self.k), pb))
        fused = self._plain_conv().to(parts[0][0].device)
        fused.weight.copy_(sum(w for w, _ in parts))
        fused.bias.copy_(sum(b for _, b in parts))
        self.fused, self.branches, self.pointwise = fused, nn.ModuleList(), None


class RepASPP(nn.Module):
    """DeepLabV3's ASPP (Chen et al. 2017) in JD's form: a 1x1 subblock, one DConv(3x3, F, d) subblock per
    dilation, and image pooling with UpSampling to the input size; outputs concatenated (N, (2 + D) F, h, w).

    `overparam=False` gives the plain ASPP (one conv+BN per subblock); `deploy=True` the folded topology."""

    def __init__(self, cin: int, channels: int, dilations: tuple[int, ...] = (5, 10, 15), K: int = 3,
                 overparam: bool = True, deploy: bool = False) -> None:
        super().__init__()
        K = K if overparam else 1
        self.top = RepConvBlock(cin, channels, 1, 1, K, False, deploy=deploy)
        self.dilated = nn.ModuleList([RepConvBlock(cin, channels, 3, d, K, overparam, deploy=deploy) for d in dilations])
        self.pool = RepConvBlock(cin, channels, 1, 1, K, False, norm=False, deploy=deploy)
        self.out_channels = channels * (2 + len(dilations))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        feats = [self.top(x), *(b(x) for b in self.dilated)]  # each (N, F, h, w)
        feats.append(self.pool(F.adaptive_avg_pool2d(x, 1)).expand(-1, -1, h, w))  # UpSampling(h x w) of a 1x1 map
        return torch.cat(feats, 1)  # (N, (2 + D) F, h, w)

    def blocks(self) -> list[RepConvBlock]:
        return [self.top, *self.dilated, self.pool]

    def reparameterize(self) -> None:
        """Training topology -> Fig. 3's inference topology (call in eval mode; BN statistics are frozen in)."""
        for block in self.blocks():
            block.reparameterize()
