"""The CFE configuration, saved in every fusion checkpoint's card (nanoGPT style: each field says why)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tandemseg.errors import SpecError
from tandemseg.jsonio import dataclass_from_json

REFINERS = ("sparse", "point", "dense")


@dataclass
class FusionConfig:
    num_classes: int = 11
    # M_u's form (ACDC Table 5): sparse = submanifold 3x3 layers at the masked pixels only (the paper's choice);
    # point = a per-point MLP at the same pixels (PointRend's head); dense = a small U-Net over every pixel
    refiner: str = "sparse"
    hidden: int = 32  # channels of the refiner's layers and of the fusion convolutions
    layers: int = 2  # refiner layers (sparse / point); the dense U-Net has a fixed two-level shape
    top_percent: float = 10.0  # eq. 12's mask: the top_percent % most uncertain pixels (pixel entropy, eq. 11)
    # refinement and fusion run at this fraction of the frame's resolution: the device network sees 1/2 of it
    # (ACDC eq. 4, s = 2), so 0.5 is the finest grid the device already computes anything on
    work_scale: float = 0.5
    # each working-grid site corrects the logits of the subpixel x subpixel frame pixels it stands for, reading their
    # colours: 1 / work_scale refines at the frame's full resolution
    subpixel: int = 2

    def __post_init__(self) -> None:
        if self.refiner not in REFINERS:
            raise SpecError(f"unknown refiner {self.refiner!r}; valid: {', '.join(REFINERS)}")
        if not 0.0 <= self.top_percent <= 100.0:
            raise SpecError(f"top_percent must be in 0..100, got {self.top_percent}")
        if not 0.0 < self.work_scale <= 1.0:
            raise SpecError(f"work_scale must be in (0, 1], got {self.work_scale}")
        if self.num_classes < 2 or self.hidden < 1 or self.layers < 1 or self.subpixel < 1:
            raise SpecError("num_classes >= 2, hidden >= 1, layers >= 1 and subpixel >= 1 are required")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> FusionConfig:
        return dataclass_from_json(cls, d, SpecError, "fusion config")
