"""Causality: changing a stream's FUTURE frames never changes its past upload decisions.

For every stateful policy (running statistics, CEMA's band, ACDC with DCAM updating U in the loop), under
every causal controller (window, sa, a bytes budget), on the offline replay path and on the device runtime.
The future frames change everything a run could peek at: probabilities, confusion matrices, the cloud's
label maps and payload sizes (a bytes budget seeded from the stream's sizes would fail here). The
`hindsight` controller and the oracle read the whole stream by definition and are not tested.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _streams import dense_cache, from_cms
from _tiny import CLOUD_TINY, DEVICE_TINY

from tandemseg.cloud.service import CloudService, ModelSegmenter
from tandemseg.data.base import Sample
from tandemseg.data.classes import CAMVID
from tandemseg.device.budget import BudgetSpec
from tandemseg.device.link import InProcessLink
from tandemseg.device.runtime import DeviceRuntime
from tandemseg.device.uncertainty import UncertaintyMatrix
from tandemseg.eval import cache as K
from tandemseg.eval import replay as R
from tandemseg.models.registry import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

N, T = 130, 60  # frames, first changed frame (more than half the stream changes: its median payload does too)
POLICIES = ("acdc", "acdc_ent", "entropy", "cema", "confidence", "random")
BUDGETS = {
    "window": BudgetSpec(rate=0.2, mode="window"),
    "sa": BudgetSpec(rate=0.2, mode="sa"),
    "bytes": BudgetSpec(rate=None, bytes_per_s=3000.0, fps=10.0),  # 300 B per frame: ~30% of 1 kB payloads
}


def future_changed(cache: K.CollabCache, t: int, seed: int) -> K.CollabCache:
    """The same stream up to frame t - 1; frames >= t replaced (sharper probabilities, other matrices and labels,
    payloads 10x larger)."""
    other = dense_cache(cache.frames, seed, c=cache.classes.num_classes)
    sizes = np.where(np.arange(cache.frames) < t, cache.bytes_up, 10 * cache.bytes_up)
    out = from_cms(np.concatenate([cache.device_cm[:t], other.device_cm[t:]]), np.concatenate([cache.cloud_cm[:t], other.cloud_cm[t:]]),
                   seed, bytes_up=sizes)
    out.probs = cache.probs[:t] + [(p.log() * 4).softmax(0) for p in other.probs[t:]]
    out.cloud_pred = cache.cloud_pred[:t] + other.cloud_pred[t:]
    return out


@pytest.fixture(scope="module")
def streams() -> tuple[K.CollabCache, K.CollabCache]:
    base = dense_cache(N, 0)
    return base, future_changed(base, T, 1)


@pytest.fixture(scope="module")
def u5() -> UncertaintyMatrix:
    a = np.random.default_rng(0).normal(size=(5, 5))
    return UncertaintyMatrix(a + a.T, dense_cache(2, 0).classes, meta={"lambda": 0.7, "stats": "pixels"})


CASES = [(p, b, 0.0) for p in POLICIES for b in BUDGETS] + [(p, b, 0.5) for p in ("acdc", "acdc_ent") for b in BUDGETS]  # DCAM: U-based only


@pytest.mark.parametrize(("policy", "budget", "dcam"), CASES)
def test_replay_decisions_ignore_the_future(policy, budget, dcam, streams, u5) -> None:
    base, changed = streams
    reps = [R.replay_run(cache, R.PolicyRun(policy, BUDGETS[budget], u5, seed=3, dcam_alpha=dcam, params={"warmup": 4} if policy == "cema" else {}))
            for cache in (base, changed)]
    assert reps[0].mask[:T].any(), "no upload before the change: the test would prove nothing"
    assert np.array_equal(reps[0].mask[:T], reps[1].mask[:T])
    assert np.array_equal(reps[0].scores[:T], reps[1].scores[:T])
    if policy != "random":  # the change is visible to the policy afterwards
        assert not np.array_equal(reps[0].scores[T:], reps[1].scores[T:])
    if dcam:
        assert reps[0].u_updates > 0


# ----------------------------------------------------------------------------- the device runtime


class Frames:
    """A labelled stream of blocky random frames; frames >= `change_at` come from another seed."""

    classes = CAMVID
    split = "val"

    def __init__(self, n: int, change_at: int | None = None) -> None:
        self.samples = [self._frame(np.random.default_rng(1000 + i if change_at is not None and i >= change_at else i)) for i in range(n)]

    @staticmethod
    def _frame(rng: np.random.Generator) -> Sample:
        img = np.kron(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8), np.ones((8, 8, 1), dtype=np.uint8))
        label = np.kron(rng.integers(0, 11, (6, 8)), np.ones((8, 8), dtype=np.int64))
        return Sample(img, label, "f")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]


def runtime_decisions(run: R.PolicyRun, frames: Frames, device, cloud) -> tuple[list[bool], int]:
    policy, controller, u = run.make()
    dcam = run.dcam()
    service = CloudService(ModelSegmenter(cloud), CAMVID, dcam_alpha=run.dcam_alpha, initial_u=None if dcam is None else dcam.initial_u,
                           dcam_settings=None if dcam is None else dcam.settings)
    rt = DeviceRuntime(device, policy, controller, InProcessLink(service), send_device_probs=dcam is not None, uncertainty=u)
    decisions = [rt.finish(rt.process(s.image, i)).uploaded for i, s in enumerate(frames.samples)]
    return decisions, (u.version if u is not None else 0)


@pytest.mark.parametrize(("policy", "budget", "dcam"), [("acdc", "sa", 0.5), ("acdc_ent", "bytes", 0.5), ("cema", "window", 0.0),
                                                        ("confidence", "sa", 0.0), ("entropy", "bytes", 0.0)])
def test_runtime_decisions_ignore_the_future(policy, budget, dcam) -> None:
    torch.manual_seed(0)
    device, cloud = build_model("device", DEVICE_TINY).eval(), build_model("cloud", CLOUD_TINY).eval()
    a = np.random.default_rng(1).normal(size=(11, 11))
    um = UncertaintyMatrix(a + a.T, CAMVID, meta={"lambda": 0.7})
    # ~500 B payloads: 300 B per frame, a prior near the truth and a 3-payload bucket, so the budget binds early
    small = BudgetSpec(rate=None, bytes_per_s=3000.0, fps=10.0, params={"initial_bytes": 600.0, "burst_s": 0.5})
    spec = small if budget == "bytes" else BUDGETS[budget]
    # an untrained model is unsure everywhere: CEMA's band is opened up to ln C so its frames are eligible
    cema = {"warmup": 2, "batch": 2, "high_margin": 1.0}
    run = R.PolicyRun(policy, spec, um, dcam_alpha=dcam, params=cema if policy == "cema" else {})
    n, t = 24, 14
    before, v0 = runtime_decisions(run, Frames(n), device, cloud)
    after, _ = runtime_decisions(run, Frames(n, change_at=t), device, cloud)
    assert any(before[:t]), "no upload before the change"
    assert before[:t] == after[:t]
    if dcam:
        assert v0 > 0  # U was updated in the loop
