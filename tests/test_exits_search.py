"""MESS configuration search (eq. 4-6, Table 1) against brute force, cached predictions against the runtime,
exit placement and cost tables."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny import DEVICE_TINY

from tandemseg.eval.metrics import ConfusionMatrix
from tandemseg.exits.calibrate import ExitCache, collect_cache, frame_confusion
from tandemseg.exits.costs import CostTable, gflops_table, latency_table, place_exit_points, stage_gflops
from tandemseg.exits.heads import ExitSpec
from tandemseg.exits.network import FINAL, MultiExitSegmenter
from tandemseg.exits.search import Configuration, Constraint, evaluate, search
from tandemseg.models.registry import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

HW = (32, 48)
PIX = [0.6, 0.9]
IMG = [0.3, 0.5, 0.7]


def random_cache(seed: int, frames: int = 8, classes: int = 3) -> tuple[ExitCache, dict[str, CostTable]]:
    """2 exit points x 2 architectures + final; deeper exits agree with the labels more often."""
    rng = np.random.default_rng(seed)
    keys = ["s1-a", "s1-b", "s2-a", "s2-b", FINAL]
    stages = [1, 1, 2, 2, 3]
    quality = [0.4, 0.55, 0.6, 0.75, 0.9]
    cms = np.zeros((frames, len(keys), classes, classes), dtype=np.int64)
    for f in range(frames):
        label = rng.integers(0, classes, 40)
        for e, q in enumerate(quality):
            pred = np.where(rng.random(40) < q, label, rng.integers(0, classes, 40))
            cms[f, e] = frame_confusion(pred, label, classes)
    conf = np.sort(rng.random((frames, len(keys), len(PIX))), axis=2)[:, :, ::-1].copy()  # fewer confident pixels at a higher th_pix
    cache = ExitCache(keys, stages, cms, conf, list(PIX))
    backbone = list(np.cumsum(rng.uniform(1, 3, 4)))
    gflops = CostTable("gflops", backbone, dict(zip(keys, rng.uniform(0.1, 1.5, 5), strict=True)))
    latency = CostTable("ms", [2 * b for b in backbone], dict(zip(keys, rng.uniform(0.1, 2, 5), strict=True)),
                        dict(zip(keys[:-1], rng.uniform(0.05, 0.3, 4), strict=True)))
    return cache, {"gflops": gflops, "latency_ms": latency}


def brute_force(cache: ExitCache, costs: dict[str, CostTable], setting: str) -> list[dict]:
    """Every configuration of eq. 4 scored with plain loops and ConfusionMatrix (independent of search.py)."""
    early = {1: ["s1-a", "s1-b"], 2: ["s2-a", "s2-b"]}
    out = []
    if setting == "budgeted":
        for k in cache.keys:
            out.append(score(cache, costs, setting, [k], [], frame_exit=lambda f, k=k: k))
        return out
    for sel in itertools.product([None, *early[1]], [None, *early[2]]):
        sel = [k for k in sel if k]
        if setting == "anytime":
            out.append(score(cache, costs, setting, sel, [], frame_exit=None))
            continue
        for policy in itertools.product(itertools.product(PIX, IMG), repeat=len(sel)):
            def take(f, sel=sel, policy=policy):
                for k, (tp, ti) in zip(sel, policy, strict=True):
                    if cache.confidence[f, cache.index(k), PIX.index(tp)] >= ti:
                        return k
                return FINAL
            out.append(score(cache, costs, setting, sel, list(policy), take))
    return out


def score(cache, costs, setting, sel, policy, frame_exit) -> dict:  # noqa: ANN001
    cm = ConfusionMatrix(cache.cms.shape[-1])
    path = sel if setting == "budgeted" else [*sel, FINAL]
    answer = path[0] if setting == "anytime" else None
    totals = dict.fromkeys(costs, 0.0)
    for f in range(cache.frames):
        k = answer or frame_exit(f)
        cm.mat += cache.cms[f, cache.index(k)]
        stop = path.index(k) if setting == "input_dependent" else len(path) - 1
        for name, t in costs.items():
            spent = t.backbone[cache.stages[cache.index(path[stop])]]
            for j in range(stop + 1):
                spent += t.heads[path[j]]
                if setting == "input_dependent" and path[j] != FINAL:
                    spent += t.policy.get(path[j], 0.0)
            totals[name] += spent / cache.frames
    return {"miou": cm.miou(), "costs": totals, "n": len(sel), "sel": sel, "policy": policy}


def feasible(r: dict, c: Constraint, ref: float) -> bool:
    if c.max_miou_drop is not None and r["miou"] < ref - c.max_miou_drop - 1e-12:
        return False
    if c.max_gflops is not None and r["costs"]["gflops"] > c.max_gflops + 1e-12:
        return False
    return c.max_latency_ms is None or r["costs"]["latency_ms"] <= c.max_latency_ms + 1e-12


def objective(r: dict, c: Constraint) -> float:
    return -r["miou"] if c.objective == "miou" else r["costs"][c.objective]


CONSTRAINTS = [
    Constraint(max_miou_drop=0.0),
    Constraint(max_miou_drop=0.05),
    Constraint(max_miou_drop=0.15, objective="latency_ms"),
    Constraint(max_gflops=4.0, objective="miou"),
    Constraint(max_latency_ms=9.0, max_miou_drop=0.2),
]


@pytest.mark.parametrize("setting", ["input_dependent", "budgeted", "anytime"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_finds_the_brute_force_optimum(setting: str, seed: int) -> None:
    cache, costs = random_cache(seed)
    everything = brute_force(cache, costs, setting)
    ref = ConfusionMatrix(3)
    ref.mat = cache.cms[:, -1].sum(0)
    for c in CONSTRAINTS:
        res = search(cache, costs, setting, c, image_thresholds=IMG, chunk=7)  # small chunks: the merge across chunks is exercised
        assert res.reference.miou == pytest.approx(ref.miou())
        ok = [r for r in everything if feasible(r, c, ref.miou())]
        if not ok:
            assert res.best is None
            continue
        truth = min(objective(r, c) for r in ok)
        best = res.best
        assert best is not None and objective({"miou": best.miou, "costs": best.costs}, c) == pytest.approx(truth, abs=1e-12), (c, best)
        again = evaluate(cache, costs, best.config)  # the reported numbers are the configuration's own
        assert again.miou == pytest.approx(best.miou) and again.costs == pytest.approx(best.costs)
        assert feasible({"miou": again.miou, "costs": again.costs}, c, ref.miou())


@pytest.mark.parametrize("setting", ["input_dependent", "anytime"])
def test_pareto_front_is_the_brute_force_front(setting: str) -> None:
    cache, costs = random_cache(3)
    everything = brute_force(cache, costs, setting)
    res = search(cache, costs, setting, Constraint(), image_thresholds=IMG, chunk=5)
    front = [(e.costs["gflops"], e.miou) for e in res.pareto]
    assert front == sorted(front) and all(m1 < m2 for (_, m1), (_, m2) in itertools.pairwise(front))
    for r in everything:  # every configuration is matched or beaten by a front point
        assert any(c <= r["costs"]["gflops"] + 1e-12 and m >= r["miou"] - 1e-12 for c, m in front)
    for c, m in front:  # and no configuration dominates a front point
        assert not any(r["costs"]["gflops"] <= c + 1e-9 and r["miou"] >= m - 1e-9 and (r["costs"]["gflops"] < c - 1e-9 or r["miou"] > m + 1e-9)
                       for r in everything)


def test_search_caps_exits_and_rejects_bad_requests() -> None:
    cache, costs = random_cache(0)
    one = search(cache, costs, "input_dependent", Constraint(max_miou_drop=0.2), image_thresholds=IMG, max_exits=1)
    assert len(one.best.config.exits) <= 1 and all(len(e.config.exits) <= 1 for e in one.pareto)
    with pytest.raises(Exception, match="objective"):
        search(cache, costs, "budgeted", Constraint(objective="energy"))
    with pytest.raises(Exception, match="setting"):
        search(cache, costs, "greedy")
    config = Configuration("input_dependent", ("s1-a",), (0.5,), (0.9,))
    assert Configuration.from_json(config.to_json()) == config and config.path() == ("s1-a", FINAL)


# ----------------------------------------------------------------------------- cache vs runtime


@pytest.fixture
def net() -> MultiExitSegmenter:
    torch.manual_seed(0)
    net = MultiExitSegmenter(build_model("device", DEVICE_TINY), [1, 3], [[ExitSpec(), ExitSpec(4, 0, False, "dlb")], ExitSpec()])
    net.train()
    with torch.no_grad():
        net(torch.rand(2, 3, *HW))
    return net.eval()


def test_cached_search_predicts_what_the_runtime_does(net: MultiExitSegmenter, tmp_path: Path) -> None:
    torch.manual_seed(1)
    samples = [(torch.rand(3, *HW), torch.randint(0, 11, HW).numpy()) for _ in range(4)]
    cache = ExitCache.load(collect_cache(net, samples, pixel_thresholds=[0.2, 0.3]).save(tmp_path / "cache.npz"))
    assert cache.keys == [*net.exit_keys, FINAL] and cache.cms.sum(axis=(2, 3)).tolist() == [[HW[0] * HW[1]] * 4] * 4
    path = [net.exit_keys[0], net.exit_keys[2]]
    th = float(np.median(cache.confidence[:, 0, 1]))
    config = Configuration("input_dependent", tuple(path), (th, 0.0), (0.3, 0.2))
    costs = {"gflops": gflops_table(net, HW)}
    predicted = evaluate(cache, costs, config)
    with torch.no_grad():
        runs = [net.input_dependent(f[None], path, [th, 0.0], [0.3, 0.2]) for f, _ in samples]
    taken = [r.exits[0] for r in runs]
    assert predicted.exit_share == {k: taken.count(k) / 4 for k in [*path, FINAL]}
    cm = ConfusionMatrix(11)
    for r, (_, label) in zip(runs, samples, strict=True):
        cm.update(r.logits.argmax(1)[0], label)
    assert predicted.miou == pytest.approx(cm.miou())


# ----------------------------------------------------------------------------- placement and costs


def test_place_exit_points_spreads_flops() -> None:
    cum = [1.0, 2.0, 4.0, 7.0, 8.0, 12.0]
    assert place_exit_points(cum, 1) == [3]  # 6.0 -> nearest 7.0
    assert place_exit_points(cum, 3) == [1, 3, 4]  # targets 3, 6, 9 -> 2.0 (tie with 4.0: the earlier), 7.0, 8.0
    assert place_exit_points([1.0, 1.1], 5) == [0, 1]  # stages run out


def test_cost_tables_add_up_to_measured_flops(net: MultiExitSegmenter) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    def measured(fn) -> float:  # noqa: ANN001
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            fn()
        return counter.get_total_flops() / 1e9

    table = gflops_table(net, HW)
    cum = stage_gflops(net.base, HW)
    assert table.backbone == cum and all(b >= a for a, b in itertools.pairwise(cum))
    frame = torch.zeros(1, 3, *HW)
    assert table.backbone[-1] + table.heads[FINAL] == pytest.approx(measured(lambda: net.base(frame)))
    for k in net.exit_keys:
        assert table.backbone[net.stage_of(k)] + table.heads[k] == pytest.approx(measured(lambda k=k: net.forward_exit(frame, k)))
    first = net.exit_keys[0]
    spent = measured(lambda: net.input_dependent(frame, [first], [0.0]))
    assert spent == pytest.approx(table.backbone[net.stage_of(first)] + table.heads[first])  # later stages cost nothing
    ms = latency_table(net, HW, warmup=1, runs=2)
    assert ms.unit == "ms" and all(v > 0 for v in [*ms.backbone, *ms.heads.values(), *ms.policy.values()])
    assert CostTable.from_json(ms.to_json()) == ms
    assert not math.isnan(table.heads[FINAL])
