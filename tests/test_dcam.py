"""DCAM (ACDC eq. 13-14) on constructed matrices: which classes are flagged, which entries of U move, and by how much."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandemseg.cloud.dcam import (
    DcamSettings,
    class_disagreement,
    dcam_blend,
    dcam_evidence,
    dcam_update,
    matrix_mask,
)

C = 4
RAW = DcamSettings(rescale=False)  # hand-checkable U_new (no Frobenius rescale)


def one_hot(label: np.ndarray, num_classes: int = C, confidence: float = 1.0) -> np.ndarray:
    """(H, W) labels -> (C, H, W) probabilities with `confidence` on the label and the rest spread evenly."""
    off = (1.0 - confidence) / (num_classes - 1)
    probs = np.full((num_classes, *label.shape), off)
    np.put_along_axis(probs, label[None], confidence, axis=0)
    return probs


def sym(seed: int, n: int = C) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(n, n))
    return (a + a.T) / 2


def scene() -> np.ndarray:
    """A 4x6 pseudo-label with classes 0, 1, 2 (class 3 absent)."""
    return np.array([[0, 0, 1, 1, 2, 2]] * 4)


def test_agreement_changes_nothing():
    u = sym(0)
    pseudo = scene()
    new_u, changed = dcam_update(u, one_hot(pseudo, confidence=0.9), pseudo, alpha=0.5)
    assert not changed
    assert np.array_equal(new_u, u)


def test_rows_and_columns_of_flagged_classes_move_and_nothing_else():
    u, pseudo = sym(1), scene()
    device = pseudo.copy()
    device[0, 2] = 2  # one pixel of class 1 called class 2: flags 1 and 2, not 0 (or absent 3)
    ev = dcam_evidence(one_hot(device, confidence=0.7), pseudo, settings=RAW)
    assert ev.class_mask.tolist() == [False, True, True, False]
    alpha = 0.25
    new_u, changed = dcam_blend(u, ev, alpha, rescale=False)
    assert changed
    blend = (1 - alpha) * u + alpha * ev.u_new
    for i in range(C):
        for j in range(C):
            moved = i in (1, 2) or j in (1, 2)
            assert new_u[i, j] == pytest.approx(blend[i, j] if moved else u[i, j]), (i, j)
    assert new_u[0, 0] == u[0, 0] and new_u[0, 3] == u[0, 3] and new_u[3, 3] == u[3, 3]
    assert np.allclose(new_u, new_u.T)  # symmetric U and U_new stay symmetric


def test_outer_mode_moves_only_pairs_of_flagged_classes():
    m = np.array([False, True, True, False])
    mask = matrix_mask(m, "outer")
    assert mask.sum() == 4 and mask[1, 2] and mask[2, 1] and not mask[0, 1]
    assert matrix_mask(m, "rows_cols").sum() == C * C - 4  # everything but the (0, 3) block


def test_u_new_is_the_closed_form_of_the_frames_pseudo_labelled_statistics():
    pseudo = scene()
    device = pseudo.copy()
    device[:, 2] = 2  # a column of class-1 pixels called 2
    probs = one_hot(device, confidence=0.8)
    ev = dcam_evidence(probs, pseudo, settings=RAW)
    correct = device == pseudo
    n = pseudo.size
    q_pos = (probs * correct).reshape(C, -1).sum(1) / n  # eq. 5, 'pixels' reading
    q_neg = (probs * ~correct).reshape(C, -1).sum(1) / n
    lam, gamma = 0.5, 1.0
    expected = (lam * np.outer(q_neg, q_neg) - (1 - lam) * np.outer(q_pos, q_pos)) / (2 * gamma)  # eq. 19, sign of eq. 18
    assert np.allclose(ev.u_new, expected)


def test_alpha_extremes_and_rescale():
    u, pseudo = sym(2), scene()
    device = pseudo.copy()
    device[1, 0] = 1
    probs = one_hot(device, confidence=0.6)
    same, changed = dcam_update(u, probs, pseudo, alpha=0.0)
    assert not changed and np.array_equal(same, u)
    full, changed = dcam_update(u, probs, pseudo, alpha=1.0)  # masked entries become U_new scaled to ||U||_F
    ev = dcam_evidence(probs, pseudo)
    scaled = ev.u_new * np.linalg.norm(u) / np.linalg.norm(ev.u_new)
    mask = matrix_mask(ev.class_mask)
    assert changed and np.allclose(full[mask], scaled[mask]) and np.array_equal(full[~mask], u[~mask])


def test_min_disagreement_and_absent_and_ignored_classes():
    pseudo = scene()
    device = pseudo.copy()
    device[0, 0] = 1  # 1 of 8 class-0 pixels wrong: 1 - IoU_0 = 1/8; class 1: 1 - IoU_1 = 1/9
    dis = class_disagreement(device, pseudo, C, np.ones_like(pseudo, bool))
    assert dis[0] == pytest.approx(1 / 8) and dis[1] == pytest.approx(1 / 9) and dis[2] == 0 and np.isnan(dis[3])
    strict = dcam_evidence(one_hot(device), pseudo, settings=DcamSettings(min_disagreement=0.12))
    assert strict.class_mask.tolist() == [True, False, False, False]
    ignored = pseudo.copy()
    ignored[0, 0] = 255  # the only disagreement sits on an ignored pixel: no evidence
    assert not dcam_evidence(one_hot(device), ignored).class_mask.any()


def test_coarse_probabilities_meet_a_full_resolution_pseudo_label():
    coarse = np.array([[0, 1], [2, 2]])
    pseudo = np.kron(coarse, np.ones((4, 4), int))  # 8x8 pseudo-label from a 2x2 device map
    u = sym(3)
    _, changed = dcam_update(u, one_hot(coarse, confidence=1.0), pseudo, alpha=0.5, settings=DcamSettings(min_disagreement=0.5))
    assert not changed  # bilinear upsampling blurs only the block borders: every class agrees on > 50% of its pixels


@pytest.mark.parametrize(
    "u, probs, label, alpha, match",
    [
        (np.eye(3), one_hot(scene()), scene(), 0.5, "C = 3"),
        (np.ones((4, 3)), one_hot(scene()), scene(), 0.5, "square"),
        (np.eye(C), one_hot(scene()), scene(), 1.5, "alpha"),
        (np.eye(C), one_hot(scene()), scene()[None], 0.5, "pseudo_label"),
        (np.full((C, C), np.nan), one_hot(scene()), scene(), 0.5, "finite"),
    ],
)
def test_bad_inputs_are_refused(u, probs, label, alpha, match):
    with pytest.raises(ValueError, match=match):
        dcam_update(u, probs, label, alpha)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), alpha=st.floats(0.0, 1.0), mode=st.sampled_from(["rows_cols", "outer"]))
def test_property_untouched_outside_the_mask_and_convex_inside(seed, alpha, mode):
    rng = np.random.default_rng(seed)
    u = sym(seed)
    pseudo = rng.integers(0, C, (6, 5))
    probs = rng.dirichlet(np.ones(C), size=(6, 5)).transpose(2, 0, 1)
    s = DcamSettings(mode=mode)
    ev = dcam_evidence(probs, pseudo, settings=s)
    new_u, _ = dcam_update(u, probs, pseudo, alpha, settings=s)
    mask = matrix_mask(ev.class_mask, mode)
    assert np.array_equal(new_u[~mask], u[~mask])
    scaled = ev.u_new * np.linalg.norm(u) / max(np.linalg.norm(ev.u_new), 1e-300)
    lo, hi = np.minimum(u, scaled) - 1e-9, np.maximum(u, scaled) + 1e-9
    assert ((new_u[mask] >= lo[mask]) & (new_u[mask] <= hi[mask])).all()
    assert np.allclose(new_u, new_u.T)


def test_settings_follow_the_fitted_u_metadata():
    s = DcamSettings.from_meta({"stats": "set", "lambda": 0.7, "gamma": 2.0, "shifts": ["clean"]}, mode="outer")
    assert (s.stats, s.lam, s.gamma, s.mode) == ("set", 0.7, 2.0, "outer")
    assert DcamSettings.from_meta({}) == DcamSettings()


def test_settings_refuse_what_no_fit_produces():
    for bad in ({"stats": "median"}, {"feature": "logits"}, {"mode": "diagonal"}, {"lam": 1.5}, {"gamma": 0.0}):
        with pytest.raises(ValueError):
            DcamSettings(**bad)
    s = DcamSettings.from_meta({"feature": "pixel", "kernel": {"sigma": 1.0}, "lambda": None})
    assert (s.feature, s.lam) == ("pixel", 0.5)  # a kernel fit still blends the closed form; a null lambda keeps the default


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), reading=st.sampled_from(["pixels", "set"]), feature=st.sampled_from(["probs", "entropy", "pixel"]),
       lam=st.sampled_from([0.3, 0.5, 0.9]))
def test_u_new_is_what_the_u_fit_makes_of_the_same_frame(seed, reading, feature, lam):
    """DCAM's U_new (float32 sums, the caller's argmax, only the sums its feature needs) equals the closed form the
    device's U fit (device/uncertainty.py: float64, every sum, pooled moments) makes of the same pseudo-labelled frame."""
    import torch
    from hypothesis import assume

    from tandemseg.device import uncertainty as U

    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(C), size=(9, 7)).transpose(2, 0, 1).astype(np.float32)
    pseudo = rng.integers(0, C, (9, 7))
    pseudo[rng.random((9, 7)) < 0.2] = 255
    ref = U.frame_stats(torch.from_numpy(probs).double(), pseudo, 255)
    assume(min(ref.n_pos, ref.n_neg) >= 2)  # the fit needs both sets; DCAM's zero moment for an empty one is tested below
    s = DcamSettings(stats=reading, lam=lam, feature=feature, rescale=False)
    ev = dcam_evidence(probs, pseudo, settings=s)
    expected = U.closed_form_from_moments(*U.moments([ref], reading, feature), lam)
    assert np.allclose(ev.u_new, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())  # float32 sums: error relative to U


def test_an_empty_set_contributes_a_zero_moment():
    pseudo = scene()
    probs = one_hot(pseudo, confidence=0.9)  # the device agrees everywhere: no wrong pixels
    for feature in ("probs", "pixel"):
        ev = dcam_evidence(probs, pseudo, settings=DcamSettings(feature=feature, rescale=False))
        assert (ev.u_new <= 0).all() and not ev.any_flagged  # only -(1 - lam) M+ / (2 gamma) remains


def test_channel_argmax_matches_numpy_including_ties():
    from tandemseg.uncertainty_stats import channel_argmax

    rng = np.random.default_rng(0)
    probs = rng.integers(0, 3, (C, 5, 6)).astype(np.float32)  # many ties
    assert np.array_equal(channel_argmax(probs), probs.argmax(0))
