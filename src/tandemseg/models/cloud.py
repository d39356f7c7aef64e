"""The cloud segmenter: DeepLabV3+-style dilated ResNet with ASPP at full resolution.

It stands in for the large pretrained cloud models of the papers (SegFormer-B5, HRNet-W48), which
cannot be downloaded here; see docs/ARCHITECTURE.md for how it is trained to be strong and robust.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from tandemseg.models.blocks import ASPP, BasicBlock, Normalize, conv_bn_act, resize


@dataclass
class CloudConfig:
    num_classes: int = 11
    input_scale: float = 1.0  # the cloud sees the full-resolution frame
    stem_channels: int = 32
    # (name, out channels, blocks, stride, dilation): ResNet-18 layout; layer4 dilates for output stride 16.
    stages: tuple[tuple[str, int, int, int, int], ...] = (
        ("layer1", 40, 2, 1, 1),
        ("layer2", 80, 2, 2, 1),
        ("layer3", 160, 2, 2, 1),
        ("layer4", 256, 2, 1, 2),
    )
    aspp_channels: int = 128
    decoder_channels: int = 64  # the /4 decoder dominates FLOPs at full resolution, so it stays narrow
    aspp_rates: tuple[int, ...] = (4, 8, 12)  # rates for output stride 16 at 360x480 (feature map 23x30)
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


class CloudSegmenter(nn.Module):
    """stem (/4: conv s2 + maxpool) -> layer1 (/4) -> layer2 (/8) -> layer3 (/16) -> layer4 (/16 dilated) -> ASPP,
    DeepLabV3+ decoder with a /4 skip."""

    def __init__(self, cfg: CloudConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or CloudConfig()
        self.normalize = Normalize()
        self.stem = nn.Sequential(
            conv_bn_act(3, cfg.stem_channels, 3, 2), conv_bn_act(cfg.stem_channels, cfg.stem_channels, 3), nn.MaxPool2d(3, 2, 1)
        )
        self.feature_info: list[dict] = [{"module": "stem", "num_chs": cfg.stem_channels, "reduction": 4}]
        blocks, cin, reduction = {}, cfg.stem_channels, 4
        for name, c, n, s, d in cfg.stages:
            blocks[name] = nn.Sequential(*[BasicBlock(cin if i == 0 else c, c, s if i == 0 else 1, d) for i in range(n)])
            cin, reduction = c, reduction * s
            self.feature_info.append({"module": name, "num_chs": c, "reduction": reduction})
        self.stages = nn.ModuleDict(blocks)
        self.aspp = ASPP(cin, cfg.aspp_channels, cfg.aspp_rates)
        self.skip = conv_bn_act(cfg.stages[0][1], cfg.skip_channels, 1)
        self.fuse = nn.Sequential(
            conv_bn_act(cfg.aspp_channels + cfg.skip_channels, cfg.decoder_channels, 1),
            conv_bn_act(cfg.decoder_channels, cfg.decoder_channels, 3),
        )
        self.classifier = nn.Conv2d(cfg.decoder_channels, cfg.num_classes, 1)

    @property
    def stage_names(self) -> list[str]:
        return [f["module"] for f in self.feature_info]

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = {"stem": self.stem(x)}
        h = feats["stem"]
        for name, block in self.stages.items():
            h = block(h)
            feats[name] = h
        return feats

    def decode(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        ctx = self.aspp(feats[self.cfg.stages[-1][0]])  # (N, A, H/16, W/16)
        s4 = feats[self.cfg.stages[0][0]]
        y = self.fuse(torch.cat([resize(ctx, s4.shape[-2:]), self.skip(s4)], 1))  # (N, D, H/4, W/4)
        return self.classifier(y)

    def forward_intermediates(self, frame: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        feats = self.forward_features(self.normalize(frame))
        return resize(self.decode(feats), frame.shape[-2:]), feats

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        """[0,1] frame (N,3,H,W) -> logits (N,C,H,W) at full resolution."""
        return self.forward_intermediates(frame)[0]
