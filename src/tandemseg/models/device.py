"""The device segmenter: a MobileNetV2-style encoder of named stages and a light decoder.

It runs on a frame downsampled by `input_scale` (ACDC eq. 4: the device sees x_s = D_s(x)) and its
logits are upsampled back to full resolution. Its stages follow a feature contract like timm's
(`feature_info`, `forward_intermediates`) because early exits attach to stages (MESS) and the
feature codec splits the network at a stage (JD).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from tandemseg.models.blocks import InvertedResidual, Normalize, conv_bn_act, resize


@dataclass
class DeviceConfig:
    num_classes: int = 11
    input_scale: float = 0.5  # s in ACDC eq. 4: the device segments a frame downsampled by this factor
    stem_channels: int = 16
    # One row per stage: (name, expand ratio t, out channels c, blocks n, stride s, dilation d).
    # 'stage4' keeps stride 16 and dilates instead, so small objects survive on a 180x240 input.
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


class DeviceSegmenter(nn.Module):
    """Stages: stem (/2) -> stage1 (/4) -> stage2 (/8) -> stage3 (/16) -> stage4 (/16, dilated).

    Decoder: context = 1x1(stage4) gated by global pooling (LR-ASPP style), fused with stage2 at /8,
    then with stage1 at /4, classified at /4 of the device input.
    """

    def __init__(self, cfg: DeviceConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or DeviceConfig()
        self.normalize = Normalize()
        self.stem = nn.Sequential(conv_bn_act(3, cfg.stem_channels, 3, 2), InvertedResidual(cfg.stem_channels, cfg.stem_channels, 1, 1))
        self.feature_info: list[dict] = [{"module": "stem", "num_chs": cfg.stem_channels, "reduction": 2}]
        blocks, cin, reduction = {}, cfg.stem_channels, 2
        for name, t, c, n, s, d in cfg.stages:
            layers = [InvertedResidual(cin if i == 0 else c, c, s if i == 0 else 1, t, d) for i in range(n)]
            blocks[name] = nn.Sequential(*layers)
            cin, reduction = c, reduction * s
            self.feature_info.append({"module": name, "num_chs": c, "reduction": reduction})
        self.stages = nn.ModuleDict(blocks)
        chs = {f["module"]: f["num_chs"] for f in self.feature_info}
        last = cfg.stages[-1][0]
        self.context = conv_bn_act(chs[last], cfg.head_channels, 1)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(chs[last], cfg.head_channels, 1), nn.Sigmoid())
        self.skip8 = conv_bn_act(chs["stage2"], cfg.skip_channels, 1)
        self.fuse8 = nn.Sequential(
            conv_bn_act(cfg.head_channels + cfg.skip_channels, cfg.head_channels + cfg.skip_channels, 3, groups=cfg.head_channels + cfg.skip_channels),
            conv_bn_act(cfg.head_channels + cfg.skip_channels, cfg.head_channels, 1),
        )
        self.skip4 = conv_bn_act(chs["stage1"], cfg.skip_channels, 1)
        self.fuse4 = nn.Sequential(
            conv_bn_act(cfg.head_channels + cfg.skip_channels, cfg.head_channels + cfg.skip_channels, 3, groups=cfg.head_channels + cfg.skip_channels),
            conv_bn_act(cfg.head_channels + cfg.skip_channels, cfg.head_channels, 1),
        )
        self.classifier = nn.Conv2d(cfg.head_channels, cfg.num_classes, 1)

    @property
    def stage_names(self) -> list[str]:
        return [f["module"] for f in self.feature_info]

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the encoder on an already normalised, already downsampled input; returns every stage output."""
        feats = {"stem": self.stem(x)}
        h = feats["stem"]
        for name, block in self.stages.items():
            h = block(h)
            feats[name] = h
        return feats

    def decode(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """Decoder over stage outputs -> logits at /4 of the device input."""
        last = feats[self.cfg.stages[-1][0]]
        ctx = self.context(last) * self.gate(last)  # (N, head, h/16, w/16)
        s8 = feats["stage2"]
        y = self.fuse8(torch.cat([resize(ctx, s8.shape[-2:]), self.skip8(s8)], 1))  # (N, head, h/8, w/8)
        s4 = feats["stage1"]
        y = self.fuse4(torch.cat([resize(y, s4.shape[-2:]), self.skip4(s4)], 1))  # (N, head, h/4, w/4)
        return self.classifier(y)  # (N, C, h/4, w/4)

    def forward_intermediates(self, frame: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Full-resolution logits and the stage outputs, from a [0,1] frame (N,3,H,W)."""
        h, w = frame.shape[-2:]
        small = self.downsample(frame)
        feats = self.forward_features(self.normalize(small))
        return resize(self.decode(feats), (h, w)), feats

    def downsample(self, frame: torch.Tensor) -> torch.Tensor:
        """ACDC eq. 4: x_s = D_s(x), bilinear with antialiasing so thin structures fade rather than alias."""
        if self.cfg.input_scale == 1.0:
            return frame
        h, w = frame.shape[-2:]
        size = (max(1, round(h * self.cfg.input_scale)), max(1, round(w * self.cfg.input_scale)))
        return torch.nn.functional.interpolate(frame, size=size, mode="bilinear", align_corners=False, antialias=True)

    def forward_coarse(self, frame: torch.Tensor) -> torch.Tensor:
        """Logits at /4 of the downsampled input, before upsampling (what the device actually computes)."""
        return self.decode(self.forward_features(self.normalize(self.downsample(frame))))

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        """[0,1] frame (N,3,H,W) -> logits (N,C,H,W) at full resolution (ACDC eq. 4, upsampled)."""
        return resize(self.forward_coarse(frame), frame.shape[-2:])
