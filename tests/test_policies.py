"""Upload policies: each score moves the obvious way on constructed probabilities; the registry checks names."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tandemseg.data.classes import ClassTable
from tandemseg.device import policies as P
from tandemseg.device.uncertainty import UncertaintyMatrix
from tandemseg.errors import SpecError

C4 = ClassTable(("a", "b", "c", "d"), ((0, 0, 0), (1, 1, 1), (2, 2, 2), (3, 3, 3)))
TS = np.linspace(0.0, 0.9, 10)  # blend from a confident map (t=0) towards uniform (t -> 1)


def blended(t: float, h: int = 12, w: int = 16) -> torch.Tensor:
    """(C, h, w): two regions (classes 0 and 1), one-hot mixed with uniform by t."""
    labels = torch.zeros(h, w, dtype=torch.long)
    labels[:, w // 2 :] = 1
    onehot = torch.nn.functional.one_hot(labels, 4).permute(2, 0, 1).float()
    return (1 - t) * onehot + t / 4


def scores(policy: P.Policy, maps: list[torch.Tensor]) -> list[float]:
    return [policy.score(P.FrameObservation(i, m)) for i, m in enumerate(maps)]


def test_entropy_rises_with_uncertainty() -> None:
    s = scores(P.make_policy("entropy"), [blended(t) for t in TS])
    assert all(b > a for a, b in zip(s, s[1:], strict=False))


def test_confidence_score_rises_as_confidence_falls() -> None:
    for smoothing in (True, False):
        pol = P.make_policy("confidence", pixel_threshold=0.6, edge_smoothing=smoothing)
        s = scores(pol, [blended(t) for t in TS])
        assert all(b >= a for a, b in zip(s, s[1:], strict=False))
        assert s[0] == 0.0 and s[-1] == 1.0


def test_mess_edge_smoothing_forgives_boundary_pixels() -> None:
    """Eq. 8-9: low confidence along a predicted boundary is replaced by the neighbourhood's median."""
    probs = blended(0.0)
    probs[:, :, 7:9] = torch.tensor([0.5, 0.4, 0.05, 0.05])[:, None, None]  # unsure right at the boundary
    plain = P.image_confidence(probs, 0.8, edge_smoothing=False)
    smoothed = P.image_confidence(probs, 0.8, edge_smoothing=True)
    assert plain < 1.0 and smoothed > plain


def test_acdc_score_follows_u() -> None:
    """Moving q from the classes U marks as safe towards those it marks as uncertain raises u(x) (eq. 9)."""
    um = UncertaintyMatrix(np.diag([-1.0, -1.0, 1.0, 1.0]), C4)
    pol = P.make_policy("acdc", um)
    maps = []
    for t in TS:
        q = torch.tensor([1 - t, 0.0, t, 0.0])
        maps.append(q[:, None, None].expand(4, 3, 3).clone())
    s = scores(pol, maps)
    assert all(b > a for a, b in zip(s, s[1:], strict=False))
    um.replace(-um.u, 1)  # a DCAM update reaches the policy at once: it holds the same object
    assert pol.score(P.FrameObservation(0, maps[-1])) < 0


def test_acdc_ent_combines_both_cues_causally() -> None:
    um = UncertaintyMatrix(np.eye(4), C4)
    pol = P.make_policy("acdc_ent", um)
    s = scores(pol, [blended(t) for t in TS])
    assert s[0] == 0.0  # nothing seen yet: no scale to standardise with
    assert s[-1] > s[2]  # uniform maps: higher entropy and lower q U q^T = |q|^2 ... entropy dominates here


def test_cema_band_and_dynamic_upper_threshold() -> None:
    pol = P.CemaPolicy(high_margin=0.5, low_margin=0.05, warmup=4, batch=2)
    ln4 = math.log(4)
    assert pol.score(P.FrameObservation(0, blended(0.0))) == -math.inf  # too certain: low-informative
    assert pol.score(P.FrameObservation(1, blended(0.9))) == -math.inf  # too uncertain: unreliable
    mid = pol.score(P.FrameObservation(2, blended(0.15)))
    assert 0.05 * ln4 < mid < 0.5 * ln4
    e_max0 = pol.thresholds(4)[1]
    for i in range(3, 13):  # the stream turns uncertain: the running mean rises, so does E_max
        pol.score(P.FrameObservation(i, blended(0.8)))
    assert pol.thresholds(4)[1] > e_max0


def test_cema_running_band_follows_the_streams_level_and_stays_bounded() -> None:
    pol = P.CemaPolicy(quantiles=(0.4, 0.8), warmup=8, window=20)
    first = [pol.score(P.FrameObservation(i, blended(0.1 + 0.02 * (i % 10)))) for i in range(40)]
    assert all(s == -math.inf for s in first[:8])  # warm-up: the band is empty until the stream shows its level
    eligible = [s for s in first[8:] if s > -math.inf]
    assert 0.2 <= len(eligible) / 32 <= 0.6  # about the 0.4..0.8 quantile band of a steady stream
    low_band = pol.thresholds(4)
    for i in range(40, 80):  # the stream's entropy level rises: the band moves up with it
        pol.score(P.FrameObservation(i, blended(0.6 + 0.02 * (i % 10))))
    high_band = pol.thresholds(4)
    assert high_band[0] > low_band[1] and len(pol._recent) == 20  # the window is bounded
    with pytest.raises(SpecError, match="quantiles"):
        P.CemaPolicy(quantiles=(0.8, 0.4))


def test_random_is_seeded_and_fixed_policies_bypass_the_controller() -> None:
    a = scores(P.make_policy("random", seed=3), [blended(0)] * 5)
    b = scores(P.make_policy("random", seed=3), [blended(0)] * 5)
    assert a == b and len(set(a)) == 5
    assert P.make_policy("all").fixed is True and P.make_policy("none").fixed is False
    oracle = P.make_policy("oracle", gains={0: 0.1, 1: 0.5})
    assert not oracle.causal and oracle.score(P.FrameObservation(1, blended(0))) == 0.5


def test_registry_rejects_bad_names_and_missing_inputs() -> None:
    with pytest.raises(SpecError, match="valid: acdc, acdc_ent, entropy, cema, confidence, random, all, none, oracle"):
        P.make_policy("nope")
    with pytest.raises(SpecError, match="uncertainty matrix"):
        P.make_policy("acdc")
    with pytest.raises(SpecError, match="gains"):
        P.make_policy("oracle")
    with pytest.raises(SpecError, match="bad parameters"):
        P.make_policy("entropy", nonsense=1)


@pytest.mark.parametrize("name", ["acdc", "acdc_ent", "entropy", "cema", "confidence", "random"])
def test_scores_of_past_frames_ignore_future_frames(name: str) -> None:
    """Scoring frame t reads frames <= t only: two streams equal up to t score alike up to t (running statistics,
    CEMA's band and the random draw included); the changed future does change later scores."""
    rng = np.random.default_rng(0)
    ts = rng.uniform(0.0, 0.9, 60)
    future = rng.uniform(0.0, 0.9, 30)
    um = UncertaintyMatrix(np.diag([-1.0, 0.5, 1.0, 2.0]), C4)
    params = {"warmup": 4, "batch": 2} if name == "cema" else ({"seed": 1} if name == "random" else {})

    def stream(tail: np.ndarray) -> list[float]:
        maps = [blended(t) for t in ts[:30]] + [blended(t).roll(3, dims=2) for t in tail]  # the future also moves
        return scores(P.make_policy(name, um if name.startswith("acdc") else None, **params), maps)

    a, b = stream(ts[30:]), stream(future)
    assert a[:30] == b[:30]
    if name != "random":
        assert a[30:] != b[30:]
