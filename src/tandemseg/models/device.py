"""The device segmenter: an encoder of stages (EfficientNet-Lite0 from ImageNet by default) and a light
LR-ASPP-style decoder with /8 and /4 skips.

It runs on a frame downsampled by `input_scale` (ACDC eq. 4: the device sees x_s = D_s(x)) and its
logits are upsampled back to full resolution. It exposes timm's feature contract (`feature_info`,
`forward_intermediates`) because early exits attach to stages (MESS) and the feature codec splits the
network at a stage (JD); the decoder itself finds its skips by reduction, never by stage name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from tandemseg.models.blocks import Normalize, conv_bn_act, resize
from tandemseg.models.encoders import build_encoder, stage_at_reduction
from tandemseg.models.segmenter import StagedSegmenter


@dataclass
class DeviceConfig:
    num_classes: int = 11
    input_scale: float = 0.5  # s in ACDC eq. 4: the device segments a frame downsampled by this factor
    encoder: str = "efficientnet_lite0"  # one of models.encoders.ENCODERS
    output_stride: int = 16  # Lite encoders: strides past this become dilation (small objects survive at 180x240)
    # From-scratch 'mobilenetv2' encoder only (the synthetic checkpoints): stem width and one row per stage
    # (name, expand ratio t, out channels c, blocks n, stride s, dilation d).
    stem_channels: int = 16
    stages: tuple[tuple[str, int, int, int, int, int], ...] = (
        ("stage1", 6, 24, 2, 2, 1),
        ("stage2", 6, 32, 3, 2, 1),
        ("stage3", 6, 64, 4, 2, 1),
        ("stage4", 6, 128, 3, 1, 2),
    )
    head_channels: int = 96  # width of the decoder's context branch
    skip_channels: int = 32  # width each skip connection is projected to
    extra: dict = field(default_factory=dict)  # reserved for later features (exits, codec split) so cards stay loadable

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> DeviceConfig:
        d = dict(d)
        d["stages"] = tuple(tuple(s) for s in d.get("stages", cls.stages))
        return cls(**d)


def separable_fuse(channels: int, out: int) -> nn.Sequential:
    """Depthwise 3x3 then pointwise 1x1: the decoder's cheap fusion of context and a skip."""
    return nn.Sequential(conv_bn_act(channels, channels, 3, groups=channels), conv_bn_act(channels, out, 1))


class DeviceSegmenter(StagedSegmenter):
    """encoder stages -> context = 1x1(last stage) gated by global pooling (LR-ASPP), fused with the /8 stage,
    then with the /4 stage, classified at /4 of the device input."""

    def __init__(self, cfg: DeviceConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or DeviceConfig()
        self.encoder = build_encoder(cfg.encoder, output_stride=cfg.output_stride, stem_channels=cfg.stem_channels, stages=cfg.stages)
        self.normalize = Normalize(self.encoder.mean, self.encoder.std)
        self.feature_info: list[dict] = self.encoder.feature_info
        self.skip_stages = (stage_at_reduction(self.feature_info, 8), stage_at_reduction(self.feature_info, 4))
        last = self.feature_info[-1]["num_chs"]
        c8, c4 = (self.feature_info[i]["num_chs"] for i in self.skip_stages)
        head, skip = cfg.head_channels, cfg.skip_channels
        self.context = conv_bn_act(last, head, 1)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(last, head, 1), nn.Sigmoid())
        self.skip8 = conv_bn_act(c8, skip, 1)
        self.fuse8 = separable_fuse(head + skip, head)
        self.skip4 = conv_bn_act(c4, skip, 1)
        self.fuse4 = separable_fuse(head + skip, head)
        self.classifier = nn.Conv2d(head, cfg.num_classes, 1)

    def encoder_input(self, frame: torch.Tensor) -> torch.Tensor:
        """ACDC eq. 4: the downsampled, normalised frame the encoder sees."""
        return self.normalize(self.downsample(frame))

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Decoder over the stage outputs -> logits at /4 of the device input."""
        last = feats[-1]
        s8, s4 = (feats[i] for i in self.skip_stages)
        ctx = self.context(last) * self.gate(last)  # (N, head, h/16, w/16)
        y = self.fuse8(torch.cat([resize(ctx, s8.shape[-2:]), self.skip8(s8)], 1))  # (N, head, h/8, w/8)
        y = self.fuse4(torch.cat([resize(y, s4.shape[-2:]), self.skip4(s4)], 1))  # (N, head, h/4, w/4)
        return self.classifier(y)  # (N, C, h/4, w/4)

    def downsample(self, frame: torch.Tensor) -> torch.Tensor:
        """ACDC eq. 4: x_s = D_s(x), bilinear with antialiasing so thin structures fade rather than alias."""
        if self.cfg.input_scale == 1.0:
            return frame
        h, w = frame.shape[-2:]
        size = (max(1, round(h * self.cfg.input_scale)), max(1, round(w * self.cfg.input_scale)))
        return torch.nn.functional.interpolate(frame, size=size, mode="bilinear", align_corners=False, antialias=True)
