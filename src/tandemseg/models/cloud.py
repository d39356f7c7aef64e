"""The cloud segmenter: DeepLabV3+ (ASPP on a dilated encoder, a /4 decoder) at full resolution.

The CamVid cloud uses an ImageNet-initialised EfficientNet-Lite2 encoder at output stride 16; it stands in
for the papers' large pretrained cloud models (SegFormer-B5, HRNet-W48), which cannot be downloaded here.
The from-scratch 'resnet' encoder is kept for the small synthetic checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from tandemseg.models.blocks import ASPP, Normalize, conv_bn_act, resize
from tandemseg.models.encoders import build_encoder, stage_at_reduction
from tandemseg.models.segmenter import StagedSegmenter


@dataclass
class CloudConfig:
    num_classes: int = 11
    input_scale: float = 1.0  # the cloud sees the full-resolution frame
    encoder: str = "efficientnet_lite2"  # one of models.encoders.ENCODERS
    output_stride: int = 16  # Lite encoders: DeepLab dilation past this stride
    # From-scratch 'resnet' encoder only (the synthetic checkpoint): stem width and
    # (name, out channels, blocks, stride, dilation) rows, ResNet-18 layout.
    stem_channels: int = 32
    stages: tuple[tuple[str, int, int, int, int], ...] = (
        ("layer1", 40, 2, 1, 1),
        ("layer2", 80, 2, 2, 1),
        ("layer3", 160, 2, 2, 1),
        ("layer4", 256, 2, 1, 2),
    )
    aspp_channels: int = 192
    decoder_channels: int = 96  # the /4 decoder dominates FLOPs at full resolution, so it stays narrow
    aspp_rates: tuple[int, ...] = (6, 12, 18)  # DeepLabV3 rates for output stride 16
    skip_channels: int = 48
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> CloudConfig:
        d = dict(d)
        d["stages"] = tuple(tuple(s) for s in d.get("stages", cls.stages))
        d["aspp_rates"] = tuple(d.get("aspp_rates", cls.aspp_rates))
        return cls(**d)


class CloudSegmenter(StagedSegmenter):
    """encoder stages -> ASPP on the last stage; DeepLabV3+ decoder with the /4 stage as skip."""

    def __init__(self, cfg: CloudConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or CloudConfig()
        self.encoder = build_encoder(cfg.encoder, output_stride=cfg.output_stride, stem_channels=cfg.stem_channels, stages=cfg.stages)
        self.normalize = Normalize(self.encoder.mean, self.encoder.std)
        self.feature_info: list[dict] = self.encoder.feature_info
        self.skip_stage = stage_at_reduction(self.feature_info, 4)
        self.aspp = ASPP(self.feature_info[-1]["num_chs"], cfg.aspp_channels, cfg.aspp_rates)
        self.skip = conv_bn_act(self.feature_info[self.skip_stage]["num_chs"], cfg.skip_channels, 1)
        self.fuse = nn.Sequential(
            conv_bn_act(cfg.aspp_channels + cfg.skip_channels, cfg.decoder_channels, 1),
            conv_bn_act(cfg.decoder_channels, cfg.decoder_channels, 3),
        )
        self.classifier = nn.Conv2d(cfg.decoder_channels, cfg.num_classes, 1)

    def encoder_input(self, frame: torch.Tensor) -> torch.Tensor:
        return self.normalize(frame)

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        ctx = self.aspp(feats[-1])  # (N, A, H/16, W/16)
        s4 = feats[self.skip_stage]
        y = self.fuse(torch.cat([resize(ctx, s4.shape[-2:]), self.skip(s4)], 1))  # (N, D, H/4, W/4)
        return self.classifier(y)
