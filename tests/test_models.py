"""The segmenters' contracts: stage shapes match `feature_info`, full-res logits, gradients everywhere, configs.

Tiny configurations keep every test well under a second; the contracts do not depend on width.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _tiny import TINY

from tandemseg.errors import SpecError
from tandemseg.models.cloud import CloudConfig
from tandemseg.models.device import DeviceConfig
from tandemseg.models.registry import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

H, W = 128, 192  # divisible by 2 * 16, so every stage's size is exactly (H*scale/reduction, W*scale/reduction)


def tiny(kind: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(kind, TINY[kind], **overrides)


@pytest.mark.parametrize("kind", ["device", "cloud"])
def test_stage_outputs_match_feature_info(kind: str) -> None:
    model = tiny(kind).eval()
    frame = torch.rand(2, 3, H, W)
    scale = model.cfg.input_scale  # device: stages run on the downsampled frame
    with torch.no_grad():
        logits, feats = model.forward_intermediates(frame)
    assert len(feats) == len(model.feature_info) and model.stage_names == [f["module"] for f in model.feature_info]
    for info, feat in zip(model.feature_info, feats, strict=True):
        expected = (2, info["num_chs"], int(H * scale) // info["reduction"], int(W * scale) // info["reduction"])
        assert tuple(feat.shape) == expected, info


@pytest.mark.parametrize("kind", ["device", "cloud"])
def test_forward_intermediates_selects_and_stops_early(kind: str) -> None:
    """timm's contract: `indices` picks stages; `stop_early` skips the rest and gives no logits."""
    model = tiny(kind).eval()
    frame = torch.rand(1, 3, H, W)
    with torch.no_grad():
        _, every = model.forward_intermediates(frame)
        logits, picked = model.forward_intermediates(frame, indices=[1, 2], stop_early=True)
    assert logits is None
    for got, want in zip(picked, [every[1], every[2]], strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("kind", ["device", "cloud"])
def test_forward_intermediates_returns_full_resolution_logits(kind: str) -> None:
    model = tiny(kind, num_classes=5).eval()
    frame = torch.rand(1, 3, H, W)
    with torch.no_grad():
        logits, _ = model.forward_intermediates(frame)
        assert logits.shape == (1, 5, H, W)
        torch.testing.assert_close(model(frame), logits)  # forward is the same computation


def test_device_computes_at_its_input_scale() -> None:
    model = tiny("device").eval()
    frame = torch.rand(1, 3, H, W)
    with torch.no_grad():
        coarse = model.forward_coarse(frame)
    assert coarse.shape[-2:] == (H // 2 // 4, W // 2 // 4)  # /4 of the half-resolution input


def test_odd_frame_sizes_still_give_full_resolution() -> None:
    """Real frames are not multiples of 32 (CamVid is 360x480, a crop may be anything)."""
    for kind in ("device", "cloud"):
        with torch.no_grad():
            assert tiny(kind).eval()(torch.rand(1, 3, 37, 53)).shape[-2:] == (37, 53)


@pytest.mark.parametrize("kind", ["device", "cloud"])
def test_backward_reaches_every_parameter(kind: str) -> None:
    model = tiny(kind).train()
    frame = torch.rand(2, 3, 64, 96)
    target = torch.randint(0, model.cfg.num_classes, (2, 64, 96))
    F.cross_entropy(model(frame), target).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
    # At least most parameters must actually move (a detached branch would give zeros, not None).
    nonzero = sum(int(p.grad.abs().sum() > 0) for p in model.parameters())
    assert nonzero > 0.9 * len(list(model.parameters()))


@pytest.mark.parametrize("cfg_cls, kind", [(DeviceConfig, "device"), (CloudConfig, "cloud")])
def test_config_json_round_trip(cfg_cls: type, kind: str) -> None:
    cfg = build_model(kind, TINY[kind]).cfg
    again = cfg_cls.from_json(cfg.to_json())
    assert again == cfg
    assert cfg_cls.from_json(cfg_cls().to_json()) == cfg_cls()  # defaults too (tuples survive JSON lists)


def test_registry_rejects_unknown_kind_and_fields() -> None:
    with pytest.raises(SpecError, match="unknown model kind 'huge'; valid: device, cloud"):
        build_model("huge")
    with pytest.raises(SpecError, match=r"unknown device config field\(s\) \['widht'\]"):
        build_model("device", {"widht": 3})


def test_default_models_fit_their_budgets() -> None:
    """Issue 9: the device (Lite0) has at most 4 M parameters; the cloud spends at least 8x its FLOPs per frame."""
    from tandemseg.models.flops import count_gflops

    device, cloud = build_model("device").eval(), build_model("cloud").eval()
    assert sum(p.numel() for p in device.parameters()) <= 4_000_000
    ratio = count_gflops(cloud, (1, 3, 360, 480)) / count_gflops(device, (1, 3, 360, 480))
    assert ratio >= 8.0, ratio

