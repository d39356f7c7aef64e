"""ConfusionMatrix checked against an independent, per-class brute-force IoU over pooled label maps; evaluate()
checked against a confusion matrix built in the test with np.bincount."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tandemseg.eval.metrics import ConfusionMatrix

IGNORE = 255


def bincount_cm(preds: list[np.ndarray], labels: list[np.ndarray], num_classes: int) -> np.ndarray:
    """The confusion matrix (rows: label, columns: prediction) by np.bincount on label * C + pred, ignored pixels out."""
    label = np.concatenate([t.ravel() for t in labels]).astype(np.int64)
    pred = np.concatenate([p.ravel() for p in preds]).astype(np.int64)
    keep = label != IGNORE
    return np.bincount(label[keep] * num_classes + pred[keep], minlength=num_classes**2).reshape(num_classes, num_classes)


def miou_from(cm: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean IoU over classes with any pixel in the label or the prediction, written out per class."""
    ious = []
    for c in range(len(cm)):
        union = cm[c, :].sum() + cm[:, c].sum() - cm[c, c]
        ious.append(cm[c, c] / union if union else math.nan)
    ious = np.array(ious)
    return float(np.mean(ious[~np.isnan(ious)])), ious


def brute_force(preds: list[np.ndarray], targets: list[np.ndarray], num_classes: int) -> tuple[list[float], float]:
    """Per-class IoU and pixel accuracy, pooling all maps, written without a confusion matrix."""
    pred = np.concatenate([p.ravel() for p in preds])
    gt = np.concatenate([t.ravel() for t in targets])
    keep = gt != IGNORE
    pred, gt = pred[keep], gt[keep]
    ious = []
    for c in range(num_classes):
        union = int(np.sum((pred == c) | (gt == c)))
        inter = int(np.sum((pred == c) & (gt == c)))
        ious.append(inter / union if union else math.nan)
    accuracy = float(np.mean(pred == gt)) if gt.size else math.nan
    return ious, accuracy


def random_maps(rng: np.random.Generator, num_classes: int, shape: tuple[int, ...], ignore_share: float = 0.1):
    """Random prediction/target maps; targets have `ignore_share` of pixels set to the ignore value."""
    pred = rng.integers(0, num_classes, shape)
    target = rng.integers(0, num_classes, shape)
    target[rng.random(shape) < ignore_share] = IGNORE
    return pred, target


def assert_matches(cm: ConfusionMatrix, preds, targets, num_classes: int) -> None:
    ious, accuracy = brute_force(preds, targets, num_classes)
    np.testing.assert_allclose(cm.iou(), ious, rtol=1e-12, equal_nan=True)
    finite = [v for v in ious if not math.isnan(v)]
    assert cm.miou() == pytest.approx(sum(finite) / len(finite))
    assert cm.pixel_acc() == pytest.approx(accuracy)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_over_several_updates(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_classes = 6
    preds, targets = zip(*(random_maps(rng, num_classes, (2, 17, 23)) for _ in range(4)), strict=True)
    cm = ConfusionMatrix(num_classes, ignore_index=IGNORE)
    for p, t in zip(preds, targets, strict=True):
        cm.update(p, t)
    assert_matches(cm, preds, targets, num_classes)
    assert cm.mat.sum() == sum(int((t != IGNORE).sum()) for t in targets)


def test_accepts_torch_tensors_and_merges() -> None:
    rng = np.random.default_rng(5)
    (p1, t1), (p2, t2) = random_maps(rng, 4, (9, 11)), random_maps(rng, 4, (9, 11))
    a, b, both = ConfusionMatrix(4), ConfusionMatrix(4), ConfusionMatrix(4)
    a.update(torch.from_numpy(p1), torch.from_numpy(t1))
    b.update(p2, t2)
    a.merge(b)
    both.update(p1, t1)
    both.update(p2, t2)
    assert np.array_equal(a.mat, both.mat)
    assert_matches(a, [p1, p2], [t1, t2], 4)


def test_absent_class_is_nan_and_excluded_from_mean() -> None:
    num_classes = 5
    rng = np.random.default_rng(3)
    pred, target = random_maps(rng, 3, (30, 30))  # only classes 0..2 appear anywhere
    cm = ConfusionMatrix(num_classes)
    cm.update(pred, target)
    iou = cm.iou()
    assert np.isnan(iou[3:]).all() and np.isfinite(iou[:3]).all()
    assert cm.miou() == pytest.approx(float(np.mean(iou[:3])))
    summary = cm.summary(["a", "b", "c", "d", "e"])
    assert summary["per_class_iou"]["d"] is None and summary["miou"] == pytest.approx(cm.miou())
    assert_matches(cm, [pred], [target], num_classes)


def test_class_only_in_prediction_counts_as_zero() -> None:
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 2, 2]), np.array([0, 0, 0]))
    assert cm.iou()[0] == pytest.approx(1 / 3) and cm.iou()[2] == 0.0 and np.isnan(cm.iou()[1])


def test_ignored_pixels_are_skipped_even_with_any_prediction() -> None:
    cm = ConfusionMatrix(3)
    cm.update(np.array([[1, 2], [0, 1]]), np.array([[1, IGNORE], [IGNORE, 1]]))
    assert cm.pixel_acc() == 1.0 and cm.mat.sum() == 2


def test_perfect_and_empty() -> None:
    cm = ConfusionMatrix(4)
    assert math.isnan(cm.miou()) and math.isnan(cm.pixel_acc())
    labels = np.random.default_rng(0).integers(0, 4, (8, 8))
    cm.update(labels, labels)
    assert cm.miou() == 1.0 and cm.pixel_acc() == 1.0


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="pixels"):
        ConfusionMatrix(3).update(np.zeros((4, 4), dtype=int), np.zeros((4, 5), dtype=int))


def test_values_out_of_range_raise() -> None:
    with pytest.raises(ValueError, match="target value"):
        ConfusionMatrix(3).update(np.zeros(4, dtype=int), np.array([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="prediction value"):
        ConfusionMatrix(3).update(np.array([0, 7, 0, 0]), np.zeros(4, dtype=int))


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # hypothesis is a dev extra; the brute-force tests above still run
    given = None

if given is not None:

    @settings(max_examples=40, deadline=None)
    @given(
        num_classes=st.integers(1, 6),
        seed=st.integers(0, 2**32 - 1),
        shapes=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=3),
        ignore_share=st.floats(0.0, 1.0),
    )
    def test_property_matches_brute_force(num_classes: int, seed: int, shapes, ignore_share: float) -> None:
        rng = np.random.default_rng(seed)
        preds, targets = zip(*(random_maps(rng, num_classes, s, ignore_share) for s in shapes), strict=True)
        cm = ConfusionMatrix(num_classes, ignore_index=IGNORE)
        for p, t in zip(preds, targets, strict=True):
            cm.update(p, t)
        ious, accuracy = brute_force(list(preds), list(targets), num_classes)
        np.testing.assert_allclose(cm.iou(), ious, rtol=1e-12, equal_nan=True)
        if math.isnan(accuracy):
            assert math.isnan(cm.pixel_acc())
        else:
            assert cm.pixel_acc() == pytest.approx(accuracy)


class Frames:
    """Labelled frames of two sizes (the batcher splits batches at size changes) with ignored pixels."""

    def __init__(self, num_classes: int, n: int = 7, seed: int = 0) -> None:
        from tandemseg.data.base import Sample
        from tandemseg.data.classes import ClassTable

        rng = np.random.default_rng(seed)
        self.classes = ClassTable(tuple(f"k{i}" for i in range(num_classes)), ((0, 0, 0),) * num_classes)
        self.split = "val"
        self.samples = []
        for i in range(n):
            h, w = (16, 24) if i % 3 else (24, 16)
            label = rng.integers(0, num_classes, (h, w))
            label[rng.random((h, w)) < 0.15] = IGNORE
            self.samples.append(Sample(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), label, f"f{i}"))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        return self.samples[i]


class RedChannelModel(torch.nn.Module):
    """Predicts class (red value mod C) at every pixel: a known answer for every batch composition."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = torch.round(x[:, 0] * 255).long() % self.num_classes  # (N, H, W)
        return torch.nn.functional.one_hot(red, self.num_classes).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_evaluate_matches_an_independent_bincount(batch_size: int) -> None:
    from tandemseg.eval.evaluate import evaluate

    ds = Frames(5)
    res = evaluate(RedChannelModel(5), ds, batch_size=batch_size, limit=6)
    preds = [s.image[..., 0].astype(np.int64) % 5 for s in ds.samples[:6]]
    cm = bincount_cm(preds, [s.label for s in ds.samples[:6]], 5)
    miou, ious = miou_from(cm)
    assert res["frames"] == 6
    assert res["miou"] == pytest.approx(miou, abs=1e-12)
    assert [res["per_class_iou"][f"k{c}"] for c in range(5)] == pytest.approx(list(ious), abs=1e-12)
    assert res["pixel_acc"] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-12)


def test_evaluate_matches_bincount_with_a_real_model() -> None:
    """A tiny segmenter, each frame forwarded alone in the test: the same numbers as evaluate() at batch size 1."""
    from _tiny import DEVICE_TINY

    from tandemseg.eval.evaluate import evaluate
    from tandemseg.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("device", DEVICE_TINY).eval()
    ds = Frames(11, n=4, seed=1)
    with torch.no_grad():
        preds = [model(torch.from_numpy(s.image).permute(2, 0, 1)[None].float() / 255).argmax(1)[0].numpy() for s in ds.samples]
    miou, _ = miou_from(bincount_cm(preds, [s.label for s in ds.samples], 11))
    assert evaluate(model, ds, batch_size=1)["miou"] == pytest.approx(miou, abs=1e-12)

