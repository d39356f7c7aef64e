"""Encoders behind the segmenters, all with one contract (timm's):

- `feature_info`: list of {'num_chs', 'reduction', 'module', 'stage'}, one per stage, in order;
- `forward_intermediates(x, indices=None, stop_early=False) -> (last, [stage outputs])` on a normalised input;
- `mean` / `std`: the input normalisation the weights expect (on [0, 1] frames).

Decoders, exits (MESS) and the feature-codec split (JD) address stages through `feature_info` only.

`efficientnet_lite*` are the ImageNet-initialised encoders of the CamVid models. `mobilenetv2` and `resnet`
are small from-scratch encoders kept for the embedded synthetic checkpoints and the fast tests.
"""

from __future__ import annotations

import torch
from torch import nn

from tandemseg.errors import SpecError
from tandemseg.models.blocks import BasicBlock, InvertedResidual, conv_bn_act
from tandemseg.models.efficientnet_lite import IMAGENET_MEAN, IMAGENET_STD, VARIANTS, EfficientNetLite

TORCHVISION_MEAN = (0.485, 0.456, 0.406)  # the from-scratch encoders were trained with these
TORCHVISION_STD = (0.229, 0.224, 0.225)


class StagedEncoder(nn.Module):
    """A stem followed by named sequential stages; shared by the from-scratch encoders."""

    mean, std = TORCHVISION_MEAN, TORCHVISION_STD

    def __init__(self, stem: nn.Module, stages: dict[str, nn.Module], feature_info: list[dict]) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleDict(stages)
        self.feature_info = feature_info

    def stage_modules(self, n: int) -> list[nn.Module]:
        """The modules that compute the first `n` stages (stage 0 is the stem)."""
        return [self.stem, *self.stages.values()][: max(0, n)]

    def forward_intermediates(
        self, x: torch.Tensor, indices: list[int] | None = None, stop_early: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        wanted = list(range(len(self.feature_info))) if indices is None else list(indices)
        last = max(wanted) if (stop_early and wanted) else len(self.feature_info) - 1
        outs: dict[int, torch.Tensor] = {}
        h = x
        for i, step in enumerate([self.stem, *self.stages.values()]):
            h = step(h)
            if i in wanted:
                outs[i] = h
            if i == last:
                break
        return h, [outs[i] for i in wanted]


def mobilenetv2_encoder(stem_channels: int, stages: tuple) -> StagedEncoder:
    """MobileNetV2-style: stem (/2) then rows (name, expand t, channels c, blocks n, stride s, dilation d)."""
    stem = nn.Sequential(conv_bn_act(3, stem_channels, 3, 2), InvertedResidual(stem_channels, stem_channels, 1, 1))
    info = [{"num_chs": stem_channels, "reduction": 2, "module": "stem", "stage": 0}]
    blocks, cin, reduction = {}, stem_channels, 2
    for i, (name, t, c, n, s, d) in enumerate(stages):
        blocks[name] = nn.Sequential(*[InvertedResidual(cin if j == 0 else c, c, s if j == 0 else 1, t, d) for j in range(n)])
        cin, reduction = c, reduction * s
        info.append({"num_chs": c, "reduction": reduction, "module": f"stages.{name}", "stage": i + 1})
    return StagedEncoder(stem, blocks, info)


def resnet_encoder(stem_channels: int, stages: tuple) -> StagedEncoder:
    """ResNet-18 layout: stem (/4: conv s2, conv, maxpool) then rows (name, channels, blocks, stride, dilation)."""
    stem = nn.Sequential(conv_bn_act(3, stem_channels, 3, 2), conv_bn_act(stem_channels, stem_channels, 3), nn.MaxPool2d(3, 2, 1))
    info = [{"num_chs": stem_channels, "reduction": 4, "module": "stem", "stage": 0}]
    blocks, cin, reduction = {}, stem_channels, 4
    for i, (name, c, n, s, d) in enumerate(stages):
        blocks[name] = nn.Sequential(*[BasicBlock(cin if j == 0 else c, c, s if j == 0 else 1, d) for j in range(n)])
        cin, reduction = c, reduction * s
        info.append({"num_chs": c, "reduction": reduction, "module": f"stages.{name}", "stage": i + 1})
    return StagedEncoder(stem, blocks, info)


class LiteEncoder(EfficientNetLite):
    """EfficientNet-Lite without its ImageNet head, as a segmentation encoder."""

    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, variant: str, output_stride: int) -> None:
        super().__init__(variant, output_stride=output_stride, classifier=False)


ENCODERS = ("mobilenetv2", "resnet", *VARIANTS)


def build_encoder(name: str, *, output_stride: int = 16, stem_channels: int = 16, stages: tuple = ()) -> nn.Module:
    """One encoder by name; `stem_channels` and `stages` apply to the from-scratch ones, `output_stride` to Lite."""
    if name in VARIANTS:
        return LiteEncoder(name, output_stride)
    if name == "mobilenetv2":
        return mobilenetv2_encoder(stem_channels, stages)
    if name == "resnet":
        return resnet_encoder(stem_channels, stages)
    raise SpecError(f"unknown encoder {name!r}; valid: {', '.join(ENCODERS)}")


def stage_at_reduction(feature_info: list[dict], reduction: int) -> int:
    """Index of the deepest stage whose output has `reduction` (decoders take skips from there)."""
    hits = [i for i, f in enumerate(feature_info) if f["reduction"] == reduction]
    if not hits:
        raise SpecError(f"the encoder has no stage at reduction {reduction}: {[f['reduction'] for f in feature_info]}")
    return hits[-1]
