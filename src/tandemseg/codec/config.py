"""The codec's typed config (nanoGPT style): every architectural and entropy-coding choice in one place.

It travels with the weights in the codec card, so a checkpoint rebuilds its own architecture. The
split fields are resolved against the device model's `feature_info` (`resolve_split`), never from a
hard-coded stage name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tandemseg.codec.errors import CodecError
from tandemseg.jsonio import dataclass_from_json

DECODERS = ("jd", "sd+d", "none")  # joint decoder (paper), source decoder + task decoder (Ahuja et al.), float features


@dataclass
class CodecConfig:
    # -- split: where the device encoder is cut (JD sec. 3.1: z = E(x)) --
    split: str = "-1"  # a stage as `feature_info` names it ('stages.stage3' or 'stage3') or its index; '-1' = last stage
    split_index: int = -1  # resolved index into feature_info (filled by resolve_split)
    in_channels: int = 0  # C of the split features z (filled from feature_info)
    in_reduction: int = 0  # reduction of z w.r.t. the device input (filled from feature_info)
    num_classes: int = 11

    # -- source encoder SE (Fig. 2): DWConv(5x5, F, G, 2) + Conv(3x3, F) per downsampling, then Conv(3x3, C_r) --
    se_channels: int = 64  # F of SE's grouped and regular convs
    se_groups: int = 4  # G of the grouped strided convs (reduced to a common divisor of the channels)
    latent_channels: int = 32  # channels of the latent r that is entropy-coded
    downsamples: int = 1  # stride-2 stages in SE; the paper's z is ~64x64, our split map is ~12x15 at 180x240

    # -- hyperprior (Ballé et al. 2018): h = HE(|r|), sigma = HD(h_hat) --
    hyper_channels: int = 32  # channels of h
    hyper_downsamples: int = 1  # stride-2 stages in HE (mirrored by stride-2 transposed convs in HD)

    # -- entropy models: what both ends must agree on bit for bit --
    scale_min: float = 0.11  # lower bound of sigma and first entry of the scale table (CompressAI's SCALES_MIN)
    scale_max: float = 64.0  # last entry; larger sigma are coded with this one (costs a little, never fails)
    num_scales: int = 64  # log-spaced scale table entries (sigma is rounded up to the next entry)
    tail_mass: float = 1e-9  # probability left outside each Gaussian's integer support (coded by escape)
    hyper_support: int = 32  # the factorised prior codes h in [-L, L]; values outside go through the escape
    density_filters: tuple[int, ...] = (3, 3, 3)  # hidden widths of Ballé's per-channel CDF network
    pmf_bits: int = 24  # integer PMFs sum to 2**pmf_bits (constriction's default model precision)
    int_weight_bits: int = 16  # fractional bits of the integer hyperprior decoder's weights
    int_act_bits: int = 8  # fractional bits of its activations; sigma is exact in 1/256 steps

    # -- task side: JD (Fig. 3, 4), or SD+D, or no compression --
    decoder: str = "jd"  # one of DECODERS
    aspp_channels: int = 64  # F of every ASPP conv (Fig. 7 ablates it)
    dilations: tuple[int, ...] = (5, 10, 15)  # ASPP dilation rates d (the paper's best, supplement sec. 6)
    K: int = 3  # training-time over-parameterisation: parallel conv+BN copies per ASPP subblock (Fig. 4, 8)
    overparam: bool = True  # False: the plain DeepLabV3 ASPP (one conv+BN per subblock)
    up_channels: int = 32  # F of JD's grouped transposed conv DWUpConv(5x5, F, G, 2)
    up_groups: int = 4  # its G
    task_channels: int = 64  # F of the DeepLabV3 head D behind SD (SD+D baseline) and of the no-compression head

    # -- objective (eq. 3 as rate + lmbda * CE; lmbda = alpha / (1 - alpha)) --
    lmbda: float = 1.0
    extra: dict = field(default_factory=dict)  # room for later fields so old cards stay loadable

    def __post_init__(self) -> None:
        self.split = str(self.split)
        self.dilations = tuple(int(d) for d in self.dilations)
        self.density_filters = tuple(int(f) for f in self.density_filters)
        if self.decoder not in DECODERS:
            raise CodecError(f"unknown codec decoder {self.decoder!r}; valid: {', '.join(DECODERS)}")
        if self.K < 1:
            raise CodecError(f"K={self.K}: the over-parameterised ASPP needs at least one conv+BN copy per subblock")
        if not 2 <= self.num_scales <= 255 or not 0 < self.scale_min < self.scale_max:
            raise CodecError("the scale table needs 2..255 entries and 0 < scale_min < scale_max")
        if not 8 <= self.pmf_bits <= 24:
            raise CodecError(f"pmf_bits={self.pmf_bits}: constriction's models hold at most 24-bit probabilities")

    @property
    def resolved(self) -> bool:
        return self.split_index >= 0 and self.in_channels > 0

    def to_json(self) -> dict:
        d = asdict(self)
        d["dilations"], d["density_filters"] = list(self.dilations), list(self.density_filters)
        return d

    @classmethod
    def from_json(cls, d: dict) -> CodecConfig:
        return dataclass_from_json(cls, d, CodecError, "codec config")
