"""Bootstrap intervals and the rate-curve AUC (eval/bootstrap.py), checked against plain loops."""

from __future__ import annotations

import numpy as np
import pytest
from _streams import dense_cache

from tandemseg.eval import bootstrap as B
from tandemseg.eval import metrics as M


def test_weights_resample_source_frames_with_replacement() -> None:
    groups = np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3])  # 4 source frames under 3 schedules
    w = B.bootstrap_weights(groups, resamples=500, seed=3)
    assert w.shape == (500, 12)
    assert (w.sum(1) == 12).all()  # 4 groups drawn 4 times, 3 frames each
    for g in range(4):  # every copy of a source frame is drawn together
        cols = w[:, groups == g]
        assert (cols == cols[:, :1]).all()
    assert np.array_equal(w, B.bootstrap_weights(groups, 500, 3))  # seeded
    assert not np.array_equal(w, B.bootstrap_weights(groups, 500, 4))
    # each group's count is Binomial(4, 1/4): mean 1
    assert abs(w[:, 0].mean() - 1.0) < 0.1


def test_resampled_miou_matches_a_loop_over_drawn_frames() -> None:
    cache = dense_cache(15, 0)
    rng = np.random.default_rng(1)
    draws = rng.integers(0, 15, (20, 15))
    weights = np.stack([np.bincount(d, minlength=15) for d in draws]).astype(float)
    got = B.resampled_miou(cache.device_cm, weights)
    for b, d in enumerate(draws):
        cm = sum(cache.device_cm[i] for i in d)  # the resampled stream, frame by frame
        assert got[b] == pytest.approx(M.miou_of(cm), abs=1e-12)
    assert B.resampled_miou(cache.device_cm, np.ones((1, 15)))[0] == pytest.approx(M.miou_of(cache.device_cm.sum(0)), abs=1e-12)


def test_percentile_interval() -> None:
    samples = np.arange(1001) / 1000.0
    assert B.percentile_ci(samples, 0.95) == pytest.approx([0.025, 0.975])
    assert B.percentile_ci(samples, 0.5) == pytest.approx([0.25, 0.75])
    assert B.percentile_ci(np.array([0.1, np.nan])) is None  # half undefined: no interval rather than a lucky one
    rare = np.append(samples, np.nan)  # one undefined resample in 1002: left out
    assert B.percentile_ci(rare, 0.95) == pytest.approx([0.025, 0.975])
    with pytest.raises(ValueError, match="level"):
        B.Resamples.draw(np.arange(5), 10, 0, level=1.5)


def test_interval_is_zero_when_every_frame_is_alike_and_widens_with_heterogeneity() -> None:
    cache = dense_cache(30, 2)
    same = np.repeat(cache.device_cm[:1], 30, axis=0)
    boot = B.Resamples.draw(np.arange(30), 300, 0)
    lo, hi = boot.ci(boot.miou(same))
    assert hi - lo == pytest.approx(0.0, abs=1e-12)
    lo, hi = boot.ci(boot.miou(cache.device_cm))
    assert hi - lo > 0.01 and lo <= M.miou_of(cache.device_cm.sum(0)) <= hi


def test_rate_auc_is_the_trapezoid_mean_over_the_span() -> None:
    rates = [0.3, 0.02, 0.1, 0.5]  # unsorted; 0.5 lies outside 2-30% and is ignored
    values = np.array([0.6, 0.4, 0.5, 0.9])
    expected = (0.08 * (0.4 + 0.5) / 2 + 0.2 * (0.5 + 0.6) / 2) / 0.28
    assert B.rate_auc(rates, values) == pytest.approx(expected)
    samples = np.stack([values, values + 0.1], axis=1)  # (R, B): the same rule per bootstrap draw
    assert B.rate_auc(rates, samples) == pytest.approx([expected, expected + 0.1])
    assert B.rate_auc([0.1], [0.5]) is None and B.rate_auc([0.4, 0.5], [0.5, 0.6]) is None
    assert B.rate_auc([0.1, 0.2], [0.5, 0.5]) == pytest.approx(0.5)  # a flat curve's mean height is its height
