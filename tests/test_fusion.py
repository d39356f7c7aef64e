"""ACDC's CFE modules (device/fusion.py): the properties the fusion issue asks of them, on random inputs."""

from __future__ import annotations

import pytest
import torch

from tandemseg.device.fusion import CollaborativeFusion, FusionConfig, SparseRefiner, neighbourhoods

pytestmark = pytest.mark.usefixtures("one_thread")
C = 5


def inputs(h: int = 12, w: int = 17, density: float = 0.2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(C, h, w, generator=g)
    frame = torch.rand(3, h, w, generator=g)
    mask = torch.rand(h, w, generator=g) < density
    return logits, frame, mask


def test_only_masked_pixels_change_and_an_empty_mask_changes_nothing() -> None:
    torch.manual_seed(0)
    refine = SparseRefiner(FusionConfig(num_classes=C, hidden=8))
    logits, frame, mask = inputs()
    out = refine(logits, frame, mask)
    changed = (out != logits).any(0)  # (H, W)
    assert changed[mask].all() and not changed[~mask].any()
    assert torch.equal(refine(logits, frame, torch.zeros_like(mask)), logits)


def test_the_neighbourhood_gather_is_a_3x3_convolution_at_the_gathered_pixels() -> None:
    torch.manual_seed(0)
    feats = torch.randn(4, 6, 7)
    weight = torch.randn(3, 4, 3, 3)
    dense = torch.nn.functional.conv2d(feats[None], weight, padding=1)[0]  # (3, 6, 7)
    index = torch.tensor([0, 6, 20, 41])  # corners and the middle
    gathered = neighbourhoods(feats, index)  # (4, 36), taps ordered (row offset, column offset), then channel
    w = weight.permute(0, 2, 3, 1).reshape(3, -1)  # (3, 36) in the same order
    assert torch.allclose(gathered @ w.T, dense.reshape(3, -1)[:, index].T, atol=1e-5)


def test_fusion_without_a_cloud_map_is_the_refinement_alone_and_shapes_follow_the_frame() -> None:
    torch.manual_seed(0)
    cfe = CollaborativeFusion(FusionConfig(num_classes=C, hidden=8))
    for h, w in ((12, 17), (9, 30), (1, 1)):
        logits, frame, mask = inputs(h, w)
        assert torch.equal(cfe(logits, frame, mask), cfe.refine(logits, frame, mask))
        cloud = torch.rand(C, h, w).softmax(0)
        assert cfe(logits, frame, mask, cloud).shape == (C, h, w)
