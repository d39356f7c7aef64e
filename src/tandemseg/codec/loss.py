"""The rate-distortion objective (JD eq. 1-3) and one optimiser step, for a later trainer.

The paper writes J = alpha J_dist + (1 - alpha) J_rate; dividing by (1 - alpha) gives the same
minimiser as J_rate + lmbda J_dist with lmbda = alpha / (1 - alpha), the form CompressAI and the
issue use. J_rate is in bits per pixel of the input frame (eq. 1 divides by H W).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tandemseg.codec.model import CodecOutput
from tandemseg.codec.ops import bits
from tandemseg.codec.pipeline import SplitCodec

IGNORE_INDEX = 255  # tandemseg's loaders map void pixels here (data.classes.IGNORE_INDEX)


@dataclass
class RDLoss:
    loss: torch.Tensor  # J = bpp + lmbda * ce
    bpp: torch.Tensor  # eq. 1: (bits of r_hat + bits of h_hat) / (N H W)
    ce: torch.Tensor  # eq. 2: mean cross-entropy over labelled pixels

    def as_floats(self) -> dict[str, float]:
        return {"loss": float(self.loss.detach()), "bpp": float(self.bpp.detach()), "ce": float(self.ce.detach())}


def rate_bits(likelihoods: dict[str, torch.Tensor]) -> torch.Tensor:
    """-log2 P(r_hat | h_hat) - log2 P(h_hat), summed over the batch (numerator of eq. 1)."""
    if not likelihoods:
        return torch.zeros(())
    return sum(bits(lik) for lik in likelihoods.values())


def rd_loss(out: CodecOutput, labels: torch.Tensor, lmbda: float, ignore_index: int = IGNORE_INDEX) -> RDLoss:
    """Eq. 3 as rate + lmbda x CE; `labels` (N, H, W) at the frame size sets the pixel count of eq. 1."""
    n, h, w = labels.shape
    bpp = rate_bits(out.likelihoods).to(out.logits.device) / (n * h * w)
    ce = F.cross_entropy(out.logits, labels, ignore_index=ignore_index)
    return RDLoss(bpp + lmbda * ce, bpp, ce)


def train_step(model: SplitCodec, optimizer: torch.optim.Optimizer, frames: torch.Tensor, labels: torch.Tensor,
               lmbda: float | None = None, clip: float = 1.0, ignore_index: int = IGNORE_INDEX) -> dict[str, float]:
    """One end-to-end step of SE, hyperprior and decoder on eq. 3 (lmbda defaults to the codec config's);
    gradient norm clipped at 1.0 as in the paper's supplement (Table 3). Returns the step's floats."""
    model.train()
    lmbda = model.codec.cfg.lmbda if lmbda is None else lmbda
    result = rd_loss(model(frames), labels, lmbda, ignore_index)
    optimizer.zero_grad(set_to_none=True)
    result.loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip)
    optimizer.step()
    return result.as_floats()
