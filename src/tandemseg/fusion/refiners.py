"""M_u of ACDC eq. 15 and the alternatives of its Table 5, one interface on the working grid (h, w):

    refiner(logits (B, C, h, w), rgb (B, 3 s^2, h, w), mask (B, h, w) bool) -> correction (B, C s^2, h, w)

`rgb` holds, at each site, the colours of the s x s frame pixels the site stands for (pixel-unshuffled), and the
correction is per such pixel (pixel-shuffle order): the refinement is at the frame's own resolution although it
runs on the coarser grid. `SparseRefiner` and `PointRefiner` compute the masked sites only and correct nothing
else; `DenseRefiner` is the dense small U-Net the paper compares against (every site). Each ends in a
zero-initialised layer, so an untrained refiner corrects nothing.

Sparse convolution by gather-compute-scatter in plain torch, not spconv: spconv 2.3.8 installs and runs here and
was faster than a first version of this gather, but plain torch keeps the device free of a compiled dependency
whose CPU wheels exist for x86-64 Linux only. The cost that remains is in docs/results/fusion.md (`bench models`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tandemseg.fusion.config import FusionConfig


def flat_index(mask: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool -> (N,) flat indices over B*H*W of the masked pixels."""
    return mask.flatten().nonzero().squeeze(1)


def tap_index(index: torch.Tensor, shape: tuple[int, int, int], kernel: int = 3, inside: bool = False):
    """Flat sites (N,) over B*H*W -> (N, k*k) flat index of each site's k x k taps (row offset, then column offset),
    clamped at the frame's border (replicate padding: a border pixel's missing neighbours repeat the border); with
    `inside`, also (N, k*k) bool: whether the tap lies in the frame."""
    _, h, w = shape
    r = kernel // 2
    offsets = torch.arange(-r, r + 1)
    img, pix = index // (h * w), index % (h * w)
    rows, cols = (pix // w)[:, None] + offsets, (pix % w)[:, None] + offsets  # (N, k) each
    flat = (img * h * w)[:, None, None] + rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]
    if not inside:
        return flat.reshape(index.numel(), -1)  # (N, k*k)
    ok = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]  # (N, k, k)
    return flat.reshape(index.numel(), -1), ok.reshape(index.numel(), -1)


def neighbourhoods(features: torch.Tensor, index: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """(B, D, H, W) features, (N,) flat pixel indices over B*H*W -> (N, k*k*D): each pixel's k x k neighbourhood
    (taps ordered by row offset, column offset, then channel; replicate padding): a k x k convolution's input
    column at those pixels only."""
    b, d, h, w = features.shape
    taps = tap_index(index, (b, h, w), kernel).reshape(-1)  # (N*k*k,)
    # one gather along the contiguous pixel axis of a (D, B*H*W) view (a free view for one frame)
    gathered = features.transpose(0, 1).reshape(d, -1).index_select(1, taps)  # (D, N*k*k)
    return gathered.T.reshape(index.numel(), -1)  # (N, k*k*D)


def site_neighbourhoods(values: torch.Tensor, index: torch.Tensor, shape: tuple[int, int, int], kernel: int = 3) -> torch.Tensor:
    """Submanifold gather: (N, K) features that exist at the sites `index` only -> (N, k*k*K), each site's k x k
    taps read from the sites' own features, zero where a tap is no site (a sparse convolution's rulebook)."""
    b, h, w = shape
    n = index.numel()
    slot = torch.full((b * h * w,), n, dtype=torch.long)  # every pixel -> its row in `values`, or the zero row n
    slot[index] = torch.arange(n)
    padded = torch.cat([values, values.new_zeros(1, values.shape[1])])  # (N + 1, K)
    taps, inside = tap_index(index, shape, kernel, inside=True)  # (N, k*k) each
    rows = torch.where(inside, slot[taps], n)  # a tap outside the frame is empty, like an unmasked one
    return padded[rows.reshape(-1)].reshape(n, -1)  # (N, k*k*K)


class SparseRefiner(nn.Module):
    """M_u (eq. 15) as a submanifold sparse network: `layers` 3x3 convolutions evaluated at the masked sites only,
    each reading the previous layer's features at masked neighbours (unmasked sites are empty, as in a
    submanifold convolution), the first reading the coarse logits and the frame around each masked site.
    Sub-pixel output: each site corrects the logits of the s x s frame pixels it stands for, from their colours."""

    kernel = 3

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        c, k, s2 = cfg.num_classes, cfg.hidden, cfg.subpixel**2
        dims = [c + 3 * s2] + [k] * (cfg.layers - 1)
        self.layers = nn.ModuleList(nn.Linear(self.kernel**2 * d, k) for d in dims)
        self.out = nn.Linear(k + c, c * s2)  # the last layer also sees the site's own coarse logits (PointRend's trick)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, logits: torch.Tensor, rgb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """logits (B, C, h, w), rgb (B, 3 s^2, h, w) (pixel-unshuffled colours), mask (B, h, w) -> the correction
        (B, C s^2, h, w) in pixel-shuffle order, zero at every unmasked site."""
        b, _, h, w = logits.shape
        index = flat_index(mask)  # (N,)
        out = logits.new_zeros(self.out.out_features, b * h * w)
        if index.numel():
            out.index_copy_(1, index, self.at_sites(logits, rgb, index).T)
        return out.reshape(-1, b, h, w).transpose(0, 1)

    def at_sites(self, logits: torch.Tensor, rgb: torch.Tensor | None, index: torch.Tensor,
                 first_taps: torch.Tensor | None = None) -> torch.Tensor:
        """The correction (N, C s^2) at the sites `index` (flat over B*h*w); nothing is computed anywhere else.
        `first_taps` (N, k*k*(C+3s^2)) replaces the first layer's gather from `cat(softmax(logits), rgb)` (a caller
        that reads the colours straight from the frame's pixels; then `rgb` may be None). The layers read class
        probabilities, not log-probabilities: a confident device's log-probabilities reach -25, and inputs of that
        size made the 3x3 layers learn slower than 1x1 ones."""
        b, _, h, w = logits.shape
        taps = first_taps if first_taps is not None else neighbourhoods(torch.cat([logits.softmax(1), rgb], 1), index, self.kernel)
        for i, layer in enumerate(self.layers):
            hidden = F.relu(layer(taps))  # (N, K)
            if i + 1 < len(self.layers):  # submanifold: the next layer reads this one's outputs at masked sites only
                taps = site_neighbourhoods(hidden, index, (b, h, w), self.kernel)  # (N, k*k*K)
        own = logits.transpose(0, 1).reshape(logits.shape[1], -1)[:, index].T.softmax(1)  # (N, C)
        return self.out(torch.cat([hidden, own], 1))  # (N, C s^2)


class PointRefiner(SparseRefiner):
    """PointRend's point head at the same masked sites: an MLP on each point's own coarse logits and colours
    (no neighbourhood), i.e. the sparse network with 1x1 kernels."""

    kernel = 1


class DenseRefiner(nn.Module):
    """The dense small U-Net of ACDC Table 5: two levels over every site, a sub-pixel correction at every site."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        c, k, s2 = cfg.num_classes, cfg.hidden, cfg.subpixel**2
        self.enc = nn.Sequential(nn.Conv2d(c + 3 * s2, k, 3, padding=1), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(k, 2 * k, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(2 * k, 2 * k, 3, padding=1), nn.ReLU())
        self.dec = nn.Sequential(nn.Conv2d(3 * k, k, 3, padding=1), nn.ReLU())
        self.out = nn.Conv2d(k, c * s2, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, logits: torch.Tensor, rgb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        e = self.enc(torch.cat([logits.softmax(1), rgb], 1))  # (B, K, h, w)
        d = F.interpolate(self.down(e), size=e.shape[-2:], mode="bilinear", align_corners=False)  # (B, 2K, h, w)
        return self.out(self.dec(torch.cat([e, d], 1)))  # (B, C s^2, h, w)


def make_refiner(cfg: FusionConfig) -> nn.Module:
    return {"sparse": SparseRefiner, "point": PointRefiner, "dense": DenseRefiner}[cfg.refiner](cfg)
