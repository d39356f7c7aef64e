"""Entropy models for the two latents (JD sec. 3.1, eq. 1), each with a differentiable path and a byte path.

- `FactorizedPrior` for h: a learned, non-parametric, per-channel CDF (Ballé et al. 2018, appendix
  6.1); P(h_hat) = c(h + 1/2) - c(h - 1/2).
- `GaussianConditional` for r: zero mean, per-element sigma from the hyperprior decoder;
  P(r_hat | h_hat) = Phi((r + 1/2) / sigma) - Phi((r - 1/2) / sigma).

The byte path (CompressAI's design): `update()` turns each model into integer PMFs over a fixed
integer support (the factorised prior per channel; the Gaussian per entry of a log-spaced scale
table) and stores them as buffers; `compress()`/`decompress()` range-code with those integers only.
"""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tandemseg.codec.errors import CodecError
from tandemseg.codec.ops import LIKELIHOOD_BOUND, lower_bound, quantize, std_normal_cdf
from tandemseg.codec.rangecoder import decode_symbols, encode_symbols, quantize_pmf
from tandemseg.codec.tables import ResizableTables


class FactorizedPrior(nn.Module):
    """Ballé's univariate density per channel: c(x) = sigmoid(f_K(...f_1(x))), f monotone by construction."""

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), support: int = 32,
                 pmf_bits: int = 24, init_scale: float = 10.0) -> None:
        super().__init__()
        self.channels, self.support, self.pmf_bits = channels, support, pmf_bits
        dims = (1, *filters, 1)
        scale = init_scale ** (1.0 / (len(dims) - 1))  # spreads the initial density over about +-init_scale
        self.matrices, self.biases, self.factors = nn.ParameterList(), nn.ParameterList(), nn.ParameterList()
        for i in range(len(dims) - 1):
            init = math.log(math.expm1(1.0 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.empty(channels, dims[i + 1], 1).uniform_(-0.5, 0.5)))
            if i < len(dims) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))
        # Integer PMF per channel over [-L, L] plus one escape entry; built by update().
        self.register_buffer("pmf", torch.zeros(channels, 2 * support + 2, dtype=torch.int32))

    def logits_cdf(self, x: torch.Tensor) -> torch.Tensor:
        """(C, 1, M) -> logit of the CDF at x, per channel. softplus keeps the matrices positive and
        |tanh(factor)| < 1 keeps each nonlinearity monotone, so the CDF is monotone (Ballé 2018, 6.1)."""
        logits = x
        for i, (matrix, bias) in enumerate(zip(self.matrices, self.biases, strict=True)):
            logits = torch.matmul(F.softplus(matrix), logits) + bias  # (C, d_{i+1}, M)
            if i < len(self.factors):
                logits = logits + torch.tanh(self.factors[i]) * torch.tanh(logits)
        return logits

    def likelihood(self, h: torch.Tensor) -> torch.Tensor:
        """P(h) of the quantisation bin around each element of h (N, C, H, W), same shape."""
        x = h.transpose(0, 1).reshape(self.channels, 1, -1)  # (C, 1, N*H*W)
        lower, upper = self.logits_cdf(x - 0.5), self.logits_cdf(x + 0.5)
        # Difference of sigmoids taken on the side where both are small: no cancellation near 1.
        sign = -torch.sign(lower + upper).detach()
        lik = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        lik = lik.reshape(self.channels, h.shape[0], *h.shape[2:]).transpose(0, 1)  # (N, C, H, W)
        return lower_bound(lik, LIKELIHOOD_BOUND)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h (N, C, H, W) -> (h~ with noise in training / h_hat rounded in eval, its likelihoods)."""
        h_tilde = quantize(h, self.training)
        return h_tilde, self.likelihood(h_tilde)

    @torch.no_grad()
    def update(self) -> None:
        """Integer PMF per channel: the bins of [-L, L] and the two tails together as the escape entry."""
        k = torch.arange(-self.support, self.support + 1, dtype=torch.float32)
        x = k.view(1, 1, -1).expand(self.channels, 1, -1)  # (C, 1, 2L+1)
        lower, upper = self.logits_cdf(x - 0.5).double(), self.logits_cdf(x + 0.5).double()
        sign = -torch.sign(lower + upper)
        probs = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).squeeze(1)  # (C, 2L+1)
        tails = torch.sigmoid(lower[..., 0]) + torch.sigmoid(-upper[..., -1])  # (C, 1): mass below -L and above L
        table = torch.cat([probs, tails], 1).numpy()
        self.pmf.copy_(torch.from_numpy(np.stack([quantize_pmf(row, self.pmf_bits) for row in table])))

    @property
    def ready(self) -> bool:
        return bool((self.pmf.sum(1) == (1 << self.pmf_bits)).all())

    def _tables(self) -> list[np.ndarray]:
        if not self.ready:
            raise CodecError("the factorised prior has no integer tables; call codec.update() after training")
        return list(self.pmf.numpy().astype(np.int64))

    def compress(self, h_hat: torch.Tensor) -> bytes:
        """One item's h_hat (C, H, W), integer-valued -> bytes."""
        groups = torch.arange(self.channels).view(-1, 1, 1).expand_as(h_hat)
        return encode_symbols(h_hat.long().numpy(), groups.numpy(), self._tables(), self.pmf_bits)

    def decompress(self, data: bytes, shape: tuple[int, int, int]) -> torch.Tensor:
        """Bytes -> h_hat (C, H, W) float32, exactly the symbols that were coded."""
        groups = np.broadcast_to(np.arange(shape[0]).reshape(-1, 1, 1), shape)
        values = decode_symbols(data, groups, self._tables(), self.pmf_bits)
        return torch.from_numpy(values.reshape(shape)).float()


class GaussianConditional(ResizableTables):
    """Zero-mean Gaussian per element of r with sigma from HD, coded through a fixed scale table."""

    _table_names = ("pmf_flat",)

    def __init__(self, scale_min: float = 0.11, scale_max: float = 64.0, num_scales: int = 64,
                 tail_mass: float = 1e-9, pmf_bits: int = 24) -> None:
        super().__init__()
        self.scale_min, self.tail_mass, self.pmf_bits = scale_min, tail_mass, pmf_bits
        table = torch.exp(torch.linspace(math.log(scale_min), math.log(scale_max), num_scales, dtype=torch.float64))
        self.register_buffer("scale_table", table)  # shipped, so both ends compare against identical values
        self.register_buffer("pmf_flat", torch.zeros(0, dtype=torch.int32))  # every scale's PMF, concatenated
        self.register_buffer("pmf_offsets", torch.zeros(num_scales + 1, dtype=torch.int64))

    def likelihood(self, r: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """P(r) of the bin around r under N(0, sigma^2), sigma lower-bounded at the table's first entry."""
        scales = lower_bound(scales, self.scale_min)
        v = torch.abs(r)  # symmetric: evaluate in the left tail, where erfc is precise
        lik = std_normal_cdf((0.5 - v) / scales) - std_normal_cdf((-0.5 - v) / scales)
        return lower_bound(lik, LIKELIHOOD_BOUND)

    def forward(self, r: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """r, sigma (N, C, H, W) -> (r~ noisy in training / r_hat rounded in eval, likelihoods)."""
        r_tilde = quantize(r, self.training)
        return r_tilde, self.likelihood(r_tilde, scales)

    def indexes(self, scales: torch.Tensor) -> torch.Tensor:
        """Index of the smallest table entry >= sigma (sigma rounded up: a slightly wide model costs a few
        bits, a narrow one many). `scales` must come from the exact integer HD so both ends agree."""
        idx = torch.bucketize(scales.double().cpu().contiguous(), self.scale_table, right=False)
        return idx.clamp_(max=self.scale_table.numel() - 1)

    @torch.no_grad()
    def update(self) -> None:
        """Integer PMF per table entry over [-T, T], T = ceil(z * sigma) with 2 Phi(-z) = tail_mass."""
        z = -float(torch.special.ndtri(torch.tensor(self.tail_mass / 2, dtype=torch.float64)))
        tables = [self._pmf_for(float(s), math.ceil(z * float(s))) for s in self.scale_table]
        sizes = torch.tensor([0] + [t.size for t in tables], dtype=torch.int64)
        self.pmf_offsets.copy_(torch.cumsum(sizes, 0))
        self.pmf_flat.resize_(int(self.pmf_offsets[-1]))
        self.pmf_flat.copy_(torch.from_numpy(np.concatenate(tables).astype(np.int32)))

    def _pmf_for(self, scale: float, half: int) -> np.ndarray:
        v = torch.arange(-half, half + 1, dtype=torch.float64).abs()
        probs = std_normal_cdf((0.5 - v) / scale) - std_normal_cdf((-0.5 - v) / scale)
        tail = 2 * std_normal_cdf(torch.tensor(-(half + 0.5) / scale, dtype=torch.float64))
        return quantize_pmf(torch.cat([probs, tail.view(1)]).numpy(), self.pmf_bits)

    @property
    def ready(self) -> bool:
        """Tables built and consistent: offsets cover the flat buffer, every PMF sums to 2**pmf_bits."""
        off = self.pmf_offsets.tolist()
        if self.pmf_flat.numel() == 0 or off[0] != 0 or off[-1] != self.pmf_flat.numel():
            return False
        if any(b - a < 3 for a, b in pairwise(off)):  # at least -T..T with T >= 1, plus the escape
            return False
        sums = torch.segment_reduce(self.pmf_flat.double(), "sum", lengths=torch.diff(self.pmf_offsets))
        return bool((sums == (1 << self.pmf_bits)).all()) and bool((self.pmf_flat > 0).all())

    def _tables(self) -> list[np.ndarray]:
        if not self.ready:
            raise CodecError("the Gaussian conditional has no integer tables; call codec.update() after training")
        flat, off = self.pmf_flat.numpy().astype(np.int64), self.pmf_offsets.tolist()
        return [flat[off[i]:off[i + 1]] for i in range(len(off) - 1)]

    def compress(self, r_hat: torch.Tensor, indexes: torch.Tensor) -> bytes:
        """One item's r_hat and scale indexes (C, H, W) -> bytes."""
        return encode_symbols(r_hat.long().numpy(), indexes.numpy(), self._tables(), self.pmf_bits)

    def decompress(self, data: bytes, indexes: torch.Tensor) -> torch.Tensor:
        """Bytes + the same scale indexes (C, H, W) -> r_hat (C, H, W) float32."""
        values = decode_symbols(data, indexes.numpy(), self._tables(), self.pmf_bits)
        return torch.from_numpy(values.reshape(tuple(indexes.shape))).float()
