"""Budget controllers: target rate met within 1 point on drifting score streams, causally; bytes budget from a fixed prior."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tandemseg.device import budget as B
from tandemseg.errors import SpecError

T = 4000


def drifting_streams() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(T)
    return {
        "sine": 3 * np.sin(2 * np.pi * t / 700) + rng.normal(size=T),  # difficulty cycles faster than it can be learnt once
        "step": np.where(t < T // 2, 0.0, 5.0) + rng.normal(size=T),  # a sudden shift
        "ramp": (1 + t / 500) * rng.normal(size=T) + t / 300,  # drifting level and spread
    }


def run(controller: B.Controller, scores: np.ndarray) -> np.ndarray:
    return np.array([controller.decide(float(s), i) for i, s in enumerate(scores)])


@pytest.mark.parametrize("mode", ["window", "sa"])
@pytest.mark.parametrize("rate", [0.05, 0.1, 0.2])
def test_rate_met_within_one_point_on_drifting_streams(mode: str, rate: float) -> None:
    for name, scores in drifting_streams().items():
        c = B.make_controller(B.BudgetSpec(rate=rate, mode=mode))
        decisions = run(c, scores)
        assert abs(decisions.mean() - rate) <= 0.01, (name, decisions.mean())
        assert c.summary()["achieved_rate"] == decisions.mean()


def test_window_controller_tracks_the_drift_locally() -> None:
    """After a step in difficulty the threshold follows: each 500-frame block stays near the target."""
    decisions = run(B.WindowController(0.1), drifting_streams()["step"])
    blocks = decisions.reshape(-1, 500).mean(1)
    assert np.abs(blocks - 0.1).max() <= 0.03


def run_charged(controller: B.Controller, scores: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Decide each frame, then charge the uploaded frame's real size (what the runtime does)."""
    out = []
    for i, s in enumerate(scores):
        up = controller.decide(float(s), i)
        if up:
            controller.charge(int(sizes[i]))
        out.append(up)
    return np.array(out)


def test_decisions_are_causal() -> None:
    """Frame t's decision depends only on scores (and charged sizes) up to t: two streams equal up to t decide alike up to t."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=600)
    b = a.copy()
    b[300:] = rng.normal(size=300) + 10
    sizes_a = rng.integers(4_000, 6_000, 600)
    sizes_b = sizes_a.copy()
    sizes_b[300:] *= 20  # the future's payloads: a controller that peeked at them would budget differently
    specs = [B.BudgetSpec(rate=0.1, mode="window"), B.BudgetSpec(rate=0.1, mode="sa"), B.BudgetSpec(rate=None, bytes_per_s=5_000, fps=10)]
    for spec in specs:
        da = run_charged(B.make_controller(spec), a, sizes_a)
        db = run_charged(B.make_controller(spec), b, sizes_b)
        assert da[:300].any() and np.array_equal(da[:300], db[:300]), spec
        assert not np.array_equal(da[300:], db[300:]), spec  # and the future does change later decisions


def test_vetoed_frames_are_never_uploaded() -> None:
    scores = np.where(np.arange(1000) % 2 == 0, -math.inf, np.random.default_rng(2).normal(size=1000))
    d = run(B.WindowController(0.2), scores)
    assert not d[scores == -math.inf].any()
    assert abs(d.mean() - 0.2) <= 0.01  # the budget is spent on the eligible half


@pytest.mark.parametrize("sizes_from", [40_000, 2_000])  # payloads 4-8x above the prior, and 2-4x below it
def test_byte_budget_respects_bytes_per_second(sizes_from: int) -> None:
    """From the fixed prior (never the stream's sizes): the budget is kept and spent, and the rate matches it."""
    rng = np.random.default_rng(3)
    fps, frames = 10.0, 3000
    sizes = rng.integers(sizes_from, 2 * sizes_from, frames)
    budget = 0.1 * fps * sizes.mean()  # affords about 10% of frames
    c = B.make_controller(B.BudgetSpec(rate=None, bytes_per_s=budget, fps=fps))
    assert c.expected_bytes == B.PRIOR_UPLOAD_BYTES
    sent = 0
    for i, s in enumerate(rng.normal(size=frames)):
        if c.decide(float(s), i):
            c.charge(int(sizes[i]))
            sent += int(sizes[i])
    allowed = budget * frames / fps
    assert sent <= allowed + c.capacity + sizes.max()
    assert sent >= 0.95 * allowed  # and it spends the budget rather than losing it at the bucket's cap
    assert abs(c.stats.achieved_rate - budget / fps / sizes.mean()) < 0.01


def test_first_measured_size_replaces_the_prior() -> None:
    c = B.ByteBudgetController(10_000, 10)
    assert c.affordable_rate() == pytest.approx(1_000 / B.PRIOR_UPLOAD_BYTES)
    c.charge(50_000)
    assert c.expected_bytes == 50_000  # the prior carries no weight once a real upload is measured
    c.charge(30_000)
    assert c.expected_bytes == 40_000  # the mean of the measured sizes ...
    for _ in range(20):
        c.charge(30_000)
    assert 30_000 < c.expected_bytes < 30_100  # ... then an exponential average (weight 0.2) that follows drift


def test_fixed_selection_and_zero_rate() -> None:
    c = B.FixedSelection([1, 3], total_frames=5)
    assert [c.decide(0.0, i) for i in range(5)] == [False, True, False, True, False]
    assert c.target_rate == 0.4
    assert not run(B.WindowController(0.0), np.arange(50.0)).any()
    assert run(B.WindowController(1.0), np.arange(50.0)).all()


def test_window_warmup_saves_budget_for_later() -> None:
    """No uploads while the window holds fewer than `warmup` scores; the budget saved is spent afterwards."""
    scores = np.random.default_rng(4).normal(size=200)
    d = run(B.WindowController(0.1, warmup=10), scores)
    assert not d[:10].any() and abs(d.mean() - 0.1) <= 0.01


def test_bad_budgets_are_rejected() -> None:
    for bad in (-0.1, 1.5, "x"):
        with pytest.raises(SpecError):
            B.WindowController(bad)
    with pytest.raises(SpecError, match="valid: window, sa"):
        B.make_controller(B.BudgetSpec(rate=0.1, mode="pid"))
    with pytest.raises(SpecError):
        B.ByteBudgetController(0, 10)
