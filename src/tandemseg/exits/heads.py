"""The early-exit architecture search space of MESS (paper 003, sec. 4.2, Fig. 2, eq. 1).

    S_exit^i = O_crm x O_#blocks x O_rdi x O_head                                  (1)

    O_crm     channel reduction module: a 1x1 conv dividing the channels by /1 (none), /2, /4 or /8
    O_blocks  extra trainable 3x3 conv blocks after the CRM (0, 1, 2; the paper also allows 3)
    O_rdi     rapid dilation increase: the exit's 3x3 layers double their dilation block after block
    O_head    FCN-Head (3x3 conv, 1x1 classifier) or DLB-Head (DeepLabV3-style ASPP-lite, 3x3, 1x1)

An exit maps one encoder stage's features (N, C_in, h, w) to class logits at the same (h, w): its native
output stride is the stage's reduction. The network (network.py) resizes them to the model's output size.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from tandemseg.errors import SpecError
from tandemseg.models.blocks import ASPP, conv_bn_act

CRM_FACTORS = (1, 2, 4, 8)
HEADS = ("fcn", "dlb")
MAX_BLOCKS = 3  # the paper's O_#blocks = {0..3}; the default space (exit_space) stops at 2
ASPP_LITE_RATES = (2, 4)  # two dilated branches in feature pixels: exits sit on small, shallow maps


@dataclass(frozen=True)
class ExitSpec:
    """One point of eq. 1. Serialisable (`to_json`/`from_json`) and usable as a module key (`name`)."""

    crm: int = 1  # channel reduction factor of the CRM (1 = no CRM)
    blocks: int = 0  # extra trainable blocks after the CRM
    rdi: bool = False  # rapid dilation increase
    head: str = "fcn"  # 'fcn' or 'dlb'

    def __post_init__(self) -> None:
        if self.crm not in CRM_FACTORS:
            raise SpecError(f"crm must be one of {CRM_FACTORS}, got {self.crm}")
        if not 0 <= self.blocks <= MAX_BLOCKS:
            raise SpecError(f"blocks must be in 0..{MAX_BLOCKS}, got {self.blocks}")
        if self.head not in HEADS:
            raise SpecError(f"head must be one of {HEADS}, got {self.head!r}")

    @property
    def name(self) -> str:
        """e.g. 'crm2-b1-rdi1-fcn': unique per spec, no dots (nn.ModuleDict keys)."""
        return f"crm{self.crm}-b{self.blocks}-rdi{int(self.rdi)}-{self.head}"

    @classmethod
    def from_name(cls, name: str) -> ExitSpec:
        try:
            crm, blocks, rdi, head = name.split("-")
            return cls(int(crm[3:]), int(blocks[1:]), bool(int(rdi[3:])), head)
        except (ValueError, IndexError):
            raise SpecError(f"not an exit spec name: {name!r} (expected like 'crm2-b1-rdi0-fcn')") from None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> ExitSpec:
        return cls(int(d["crm"]), int(d["blocks"]), bool(d["rdi"]), str(d["head"]))

    def dilations(self) -> tuple[tuple[int, ...], int]:
        """(dilation of each extra block, dilation of the head's 3x3 conv).

        RDI doubles the dilation at every exit layer (2, 4, 8, ...); without it everything is 1.
        """
        if not self.rdi:
            return (1,) * self.blocks, 1
        return tuple(2 ** (j + 1) for j in range(self.blocks)), 2 ** (self.blocks + 1)


def exit_space(
    crm: Iterable[int] = CRM_FACTORS, blocks: Iterable[int] = (0, 1, 2),
    rdi: Iterable[bool] = (False, True), head: Iterable[str] = HEADS,
) -> list[ExitSpec]:
    """Eq. 1 enumerated (the product of the option sets), in a fixed order."""
    return [ExitSpec(c, b, r, h) for c, b, r, h in itertools.product(crm, blocks, rdi, head)]


def fcn_head(channels: int, num_classes: int, dilation: int) -> nn.Sequential:
    """FCN-Head (Long et al.): 3x3 conv-BN-ReLU, dropout, 1x1 classifier."""
    return nn.Sequential(conv_bn_act(channels, channels, 3, dilation=dilation), nn.Dropout2d(0.1), nn.Conv2d(channels, num_classes, 1))


def dlb_head(channels: int, num_classes: int, dilation: int) -> nn.Sequential:
    """DLB-Head: DeepLabV3's ASPP with two dilated branches ('lite'), a 3x3 conv and a 1x1 classifier.

    The ASPP's rates scale with the RDI dilation, so RDI widens this head's context as it does FCN's.
    """
    rates = tuple(r * dilation for r in ASPP_LITE_RATES)
    return nn.Sequential(ASPP(channels, channels, rates), conv_bn_act(channels, channels, 3), nn.Conv2d(channels, num_classes, 1))


class ExitHead(nn.Module):
    """CRM -> extra blocks -> head: features (N, C_in, h, w) -> logits (N, classes, h, w) (Fig. 2)."""

    def __init__(self, spec: ExitSpec, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.spec = spec
        width = max(1, in_channels // spec.crm)
        # The CRM shrinks the feature volume before anything else runs on it, so the blocks and the
        # head pay for `width` channels at full stage resolution (sec. 4.2, 1).
        self.crm = nn.Identity() if spec.crm == 1 else conv_bn_act(in_channels, width, 1)
        block_dilations, head_dilation = spec.dilations()
        self.blocks = nn.Sequential(*[conv_bn_act(width, width, 3, dilation=d) for d in block_dilations])
        make = fcn_head if spec.head == "fcn" else dlb_head
        self.head = make(width, num_classes, head_dilation)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.crm(feat)))  # (N, classes, h, w)


def build_exit(spec: ExitSpec, in_channels: int, num_classes: int) -> ExitHead:
    """The exit of `spec` for a stage with `in_channels` channels."""
    return ExitHead(spec, in_channels, num_classes)
