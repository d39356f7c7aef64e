"""The feature codec: SE + hyperprior + entropy models + a cloud decoder (JD, SD+D or float head).

Two paths side by side, as in CompressAI:
- differentiable: `forward(z, out_size)` -> logits and the likelihoods of r and h (noise in
  training, rounding in eval), for the rate term of eq. 1;
- bytes: `compress(z)` -> per item the two range-coded bitstreams; `decompress(coded)` -> exactly
  the quantised latents (r_hat, h_hat) that were coded; `decode(r_hat, ...)` -> logits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from tandemseg.codec.config import CodecConfig
from tandemseg.codec.decoders import FloatHead, JointDecoder, SourceTaskDecoder
from tandemseg.codec.entropy import FactorizedPrior, GaussianConditional
from tandemseg.codec.errors import BitstreamCorrupt, CodecError
from tandemseg.codec.integer import integer_scales
from tandemseg.codec.layers import HyperDecoder, HyperEncoder, SourceEncoder, down_sizes

Shape = tuple[int, int, int]  # (C, H, W) of one item
MAX_LATENT_SYMBOLS = 1 << 24  # a header announcing more is damaged or hostile: refuse before allocating


@dataclass
class CodecOutput:
    logits: torch.Tensor  # (N, S, H, W) class logits at the frame size
    likelihoods: dict[str, torch.Tensor]  # {'r': (N, C_r, h_r, w_r), 'h': (N, C_h, h_h, w_h)}; empty without compression


@dataclass(frozen=True)
class CodedFeatures:
    """One frame's two bitstreams (b_r_hat, b_h_hat in the paper) and the shapes needed to decode them."""

    r_bytes: bytes
    h_bytes: bytes
    z_shape: Shape
    r_shape: Shape
    h_shape: Shape

    @property
    def num_bytes(self) -> int:
        return len(self.r_bytes) + len(self.h_bytes)


class FeatureCodec(nn.Module):
    """JD sec. 3.1-3.2 on split features z (N, C_z, H_z, W_z); `cfg` must be resolved (`resolve_config`)."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        if not cfg.resolved:
            raise CodecError("the codec config has no split stage yet; resolve it against the device's feature_info first")
        if cfg.decoder != "none" and cfg.downsamples < 1:
            raise CodecError("SE needs at least one stride-2 DWConv (downsamples >= 1); JD's DWUpConv undoes one")
        self.cfg = cfg
        self.codec_id: str | None = None  # set by save/load: the fingerprint a bitstream must carry
        self.device_hash: str | None = None  # fingerprint of the device checkpoint the codec was trained on
        if cfg.decoder == "none":
            self.decoder = FloatHead(cfg.in_channels, cfg.task_channels, cfg.num_classes, cfg.dilations)
            return
        self.se = SourceEncoder(cfg.in_channels, cfg.se_channels, cfg.latent_channels, cfg.se_groups, cfg.downsamples)
        self.he = HyperEncoder(cfg.latent_channels, cfg.hyper_channels, cfg.hyper_downsamples)
        self.hd = HyperDecoder(cfg.hyper_channels, cfg.latent_channels, cfg.hyper_downsamples)
        self.prior = FactorizedPrior(cfg.hyper_channels, cfg.density_filters, cfg.hyper_support, cfg.pmf_bits)
        self.gaussian = GaussianConditional(cfg.scale_min, cfg.scale_max, cfg.num_scales, cfg.tail_mass, cfg.pmf_bits)
        self.decoder = self._task_decoder(cfg)

    @staticmethod
    def _task_decoder(cfg: CodecConfig) -> nn.Module:
        if cfg.decoder == "jd":
            return JointDecoder(cfg.latent_channels, cfg.up_channels, cfg.up_groups, cfg.aspp_channels,
                                cfg.num_classes, cfg.dilations, cfg.K, cfg.overparam)
        return SourceTaskDecoder(cfg.latent_channels, cfg.se_channels, cfg.in_channels, cfg.se_groups,
                                 cfg.downsamples, cfg.task_channels, cfg.num_classes, cfg.dilations)

    @property
    def compresses(self) -> bool:
        return self.cfg.decoder != "none"

    # -- shapes ---------------------------------------------------------------------------------
    def shapes(self, z_shape: Shape) -> tuple[Shape, Shape]:
        """(r_shape, h_shape) that SE and HE produce from split features of shape (C_z, H_z, W_z)."""
        r_hw = down_sizes(z_shape[1:], self.cfg.downsamples)[-1]
        h_hw = down_sizes(r_hw, self.cfg.hyper_downsamples)[-1]
        return (self.cfg.latent_channels, *r_hw), (self.cfg.hyper_channels, *h_hw)

    def _up_sizes(self, hw: tuple[int, int], n: int) -> list[tuple[int, int]]:
        """Target sizes on the way back up to `hw` through n stride-2 transposed layers."""
        return down_sizes(hw, n)[::-1][1:]

    # -- differentiable path --------------------------------------------------------------------
    def forward(self, z: torch.Tensor, out_size: tuple[int, int]) -> CodecOutput:
        """z (N, C_z, H_z, W_z) -> logits (N, S, *out_size) and the likelihoods of r and h."""
        if not self.compresses:
            return CodecOutput(self.decoder(z, out_size), {})
        r = self.se(z)  # (N, C_r, h_r, w_r)
        h = self.he(r)  # (N, C_h, h_h, w_h)
        h_tilde, lik_h = self.prior(h)
        sigma = self.hd(h_tilde, self._up_sizes(r.shape[-2:], self.cfg.hyper_downsamples))  # (N, C_r, h_r, w_r)
        r_tilde, lik_r = self.gaussian(r, sigma)
        logits = self.decode(r_tilde, tuple(z.shape[-2:]), out_size)
        return CodecOutput(logits, {"r": lik_r, "h": lik_h})

    def decode(self, r_hat: torch.Tensor, z_hw: tuple[int, int], out_size: tuple[int, int]) -> torch.Tensor:
        """Quantised latents -> class logits (N, S, *out_size): JD directly, or SD then D."""
        return self.decoder(r_hat, self._up_sizes(z_hw, self.cfg.downsamples), out_size)

    # -- byte path ------------------------------------------------------------------------------
    def _require_compression(self) -> None:
        if not self.compresses:
            raise CodecError("this is the no-compression baseline (decoder='none'); it has no bitstream")

    def _scale_indexes(self, h_hat: torch.Tensor, r_hw: tuple[int, int]) -> torch.Tensor:
        """Scale-table indexes from the exact integer HD: identical on every machine and batch size."""
        sigma = integer_scales(self.hd, h_hat, self._up_sizes(r_hw, self.cfg.hyper_downsamples),
                               self.cfg.int_weight_bits, self.cfg.int_act_bits)
        return self.gaussian.indexes(sigma)  # (N, C_r, h_r, w_r) int64

    @torch.no_grad()
    def compress(self, z: torch.Tensor) -> list[CodedFeatures]:
        """z (N, C_z, H_z, W_z) -> one `CodedFeatures` per item (true rounding, range coding)."""
        self._require_compression()
        r = self.se(z)
        h_hat = torch.round(self.he(r)).cpu()  # (N, C_h, h_h, w_h)
        r_hat = torch.round(r).cpu()  # (N, C_r, h_r, w_r)
        idx = self._scale_indexes(h_hat, tuple(r.shape[-2:]))
        z_shape = tuple(int(v) for v in z.shape[1:])
        r_shape, h_shape = self.shapes(z_shape)
        return [
            CodedFeatures(self.gaussian.compress(r_hat[i], idx[i]), self.prior.compress(h_hat[i]), z_shape, r_shape, h_shape)
            for i in range(z.shape[0])
        ]

    def check_shapes(self, coded: CodedFeatures) -> None:
        """Refuse shapes this codec cannot have produced (a damaged or foreign header)."""
        z_shape = tuple(coded.z_shape)
        if len(z_shape) != 3 or z_shape[0] != self.cfg.in_channels or min(z_shape) < 1:
            raise BitstreamCorrupt(f"split features of shape {z_shape} do not fit this codec (C_z = {self.cfg.in_channels})")
        if (tuple(coded.r_shape), tuple(coded.h_shape)) != self.shapes(z_shape):
            raise BitstreamCorrupt(f"latent shapes {coded.r_shape}, {coded.h_shape} do not follow from {z_shape} for this codec")
        if math.prod(coded.r_shape) > MAX_LATENT_SYMBOLS:
            raise BitstreamCorrupt(f"latent of shape {coded.r_shape} is larger than any frame's ({MAX_LATENT_SYMBOLS} symbols)")

    @torch.no_grad()
    def decompress(self, coded: Sequence[CodedFeatures]) -> tuple[torch.Tensor, torch.Tensor]:
        """Bitstreams of items with equal shapes -> (r_hat (N, C_r, h_r, w_r), h_hat (N, C_h, h_h, w_h)), exact."""
        self._require_compression()
        if not coded or any(c.z_shape != coded[0].z_shape for c in coded):
            raise CodecError("decompress takes a non-empty batch of items with equal shapes")
        for c in coded:
            self.check_shapes(c)
        h_hat = torch.stack([self.prior.decompress(c.h_bytes, c.h_shape) for c in coded])
        idx = self._scale_indexes(h_hat, coded[0].r_shape[1:])
        r_hat = torch.stack([self.gaussian.decompress(c.r_bytes, idx[i]) for i, c in enumerate(coded)])
        return r_hat, h_hat

    # -- deployment -----------------------------------------------------------------------------
    def update(self) -> None:
        """Build the integer PMF tables of both entropy models (before saving or coding)."""
        if self.compresses:
            self.prior.update()
            self.gaussian.update()

    def reparameterize(self) -> None:
        """Fold the over-parameterised ASPP into its inference topology (eval mode; sec. 3.3)."""
        self.decoder.reparameterize()

    @property
    def is_reparameterized(self) -> bool:
        """True once the decoder's ASPP runs its folded (inference) topology."""
        return any(getattr(m, "fused", None) is not None for m in self.decoder.modules())

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per side: the device runs SE, HE and HD (for the scale indexes); the cloud runs HD,
        the factorised prior and the decoder (JD, or SD + D). Integer tables are not parameters."""
        def count(*mods: nn.Module) -> int:
            return sum(p.numel() for m in mods for p in m.parameters())

        if not self.compresses:
            return {"device": 0, "cloud": count(self.decoder), "decoder": count(self.decoder)}
        return {
            "device": count(self.se, self.he, self.hd, self.prior),
            "cloud": count(self.hd, self.prior, self.decoder),
            "decoder": count(self.decoder),
        }
