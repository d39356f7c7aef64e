"""ACDC's Collaborative Fusion Engine (paper 000, sec. 3.2.3, eq. 15): the modules, not yet trained or in the runtime.

    M_u  sparse refinement   only the pixels the eq. 12 mask marks are recomputed, from the upsampled coarse logits
                             and the full-resolution frame, by a small submanifold sparse convolutional network:
                             gather each masked pixel's 3x3 neighbourhood, compute, scatter back (eq. 15)
    fuse dual granularity    the refined coarse map and the cloud's fine probabilities, concatenated and mixed by a
                             few light convolutions; a frame the cloud never saw gets the refined map alone

Gather-compute-scatter in plain torch for now. Checked here: MinkowskiEngine fails to build; spconv 2.3.8 (with
cumm) installs and runs on CPU with torch 2.13, and one submanifold 3x3 layer (14 -> 32 channels, 10% of a 360x480
frame active, one thread) took 6.4 ms against 17.7 ms for `neighbourhoods` + a linear layer (a throwaway venv and
script, not in the repo; spconv's first layer sees only active sites, this one also the unmasked neighbours).
Moving to spconv, at a resolution that fits the 10% latency budget, is the fusion issue's next step. The modules
keep the shapes of a single frame: (C, H, W) logits, (3, H, W) frame.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class FusionConfig:
    num_classes: int = 11
    hidden: int = 32  # channels of the sparse layers and of the fusion convolutions
    layers: int = 2  # submanifold 3x3 sparse layers at the masked pixels
    top_percent: float = 10.0  # eq. 12's mask: the most uncertain top_percent % of the pixels

    def to_json(self) -> dict:
        return asdict(self)


def neighbourhoods(features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(D, H, W) features, (N,) flat pixel indices -> (N, 9 * D): each pixel's 3x3 neighbourhood (zero padded)."""
    d, h, w = features.shape
    padded = F.pad(features, (1, 1, 1, 1)).reshape(d, -1)  # (D, (H+2)(W+2))
    rows, cols = index // w + 1, index % w + 1  # positions in the padded map
    offsets = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
    taps = [padded[:, (rows + dr) * (w + 2) + cols + dc] for dr, dc in offsets]  # 9 x (D, N)
    return torch.cat(taps, 0).T  # (N, 9D)


class SparseRefiner(nn.Module):
    """M_u of eq. 15: new logits at the masked pixels, the input logits everywhere else."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        c, k = cfg.num_classes, cfg.hidden
        dims = [c + 3] + [k] * (cfg.layers - 1)
        self.layers = nn.ModuleList(nn.Linear(9 * d, k) for d in dims)
        self.out = nn.Linear(k, c)

    def forward(self, logits: torch.Tensor, frame: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """logits (C, H, W) upsampled coarse logits, frame (3, H, W) in [0, 1], mask (H, W) bool -> (C, H, W)."""
        index = mask.flatten().nonzero().squeeze(1)  # (N,)
        if index.numel() == 0:
            return logits
        h, w = mask.shape
        x = torch.cat([logits, frame], 0)  # (C + 3, H, W)
        for i, layer in enumerate(self.layers):
            hidden = F.relu(layer(neighbourhoods(x, index)))  # (N, K)
            if i + 1 < len(self.layers):  # submanifold: the next layer sees features at masked pixels only
                x = hidden.new_zeros(hidden.shape[1], h * w).index_copy(1, index, hidden.T).reshape(-1, h, w)  # (K, H, W)
        delta = self.out(hidden)  # (N, C)
        flat = logits.reshape(logits.shape[0], -1)  # (C, H*W)
        return flat.index_add(1, index, delta.T).reshape(logits.shape)


class DualFusion(nn.Module):
    """The refined coarse map and the cloud's fine probabilities into one map; without the cloud, the refined map."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        c, k = cfg.num_classes, cfg.hidden
        self.mix = nn.Sequential(nn.Conv2d(2 * c, k, 1), nn.ReLU(), nn.Conv2d(k, k, 3, padding=1, groups=k), nn.ReLU(), nn.Conv2d(k, c, 1))

    def forward(self, refined: torch.Tensor, cloud_probs: torch.Tensor | None = None) -> torch.Tensor:
        """refined (C, H, W) logits, cloud_probs (C, H, W) or None -> (C, H, W) logits."""
        if cloud_probs is None:
            return refined
        both = torch.cat([refined.softmax(0), cloud_probs], 0)[None]  # (1, 2C, H, W)
        return torch.log(cloud_probs.clamp_min(1e-6)) + self.mix(both)[0]  # the cloud's semantics, corrected


class CollaborativeFusion(nn.Module):
    """CFE = M_u then the fusion (eq. 15 and what follows it)."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.refine = SparseRefiner(cfg)
        self.fuse = DualFusion(cfg)

    def forward(self, logits: torch.Tensor, frame: torch.Tensor, mask: torch.Tensor, cloud_probs: torch.Tensor | None = None) -> torch.Tensor:
        return self.fuse(self.refine(logits, frame, mask), cloud_probs)
