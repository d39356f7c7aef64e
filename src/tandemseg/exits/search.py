"""Configuration search of MESS (paper 003, sec. 5.1, eq. 4-6, Table 1), exhaustive, on cached predictions.

The space (eq. 4) is, per candidate exit point, 'none' or one of its trained exit architectures, and for
the input-dependent setting the exit policy of each chosen exit: a pixel threshold th_pix (eq. 7) and an
image threshold th_img. Every configuration is scored from the cache (calibrate.py) without running the
network: a frame's answer is the confusion matrix of the exit it stops at, so mIoU over any mix is exact.

Costs (Table 1), per cost table (GFLOPs, latency), with b the cumulative backbone cost at a stage, h an
exit's head (the decoder for the final exit) and d the cost of an early exit's decision (eq. 7-9):

    budgeted          b(K_n) + h_n                                          one exit, nothing else runs
    anytime           b(K_final) + sum_n h_n + h_final                      every chosen exit runs
    input-dependent   mean over frames of b(K_j) + sum_{n<=j} (h_n + d_n)   j: the exit the frame stops at
                      (= sum_n p_n * segment cost, p_n the share of frames reaching exit n)

Accuracy is the mIoU of the answers: the chosen exit (budgeted), the first exit's output, the earliest
one a caller can get (anytime), the exit each frame stops at (input-dependent). Eq. 5 minimises a cost
subject to a maximum mIoU drop against the final exit (and any cost limits); eq. 6 maximises mIoU subject
to cost limits. Ties go to the better secondary metric, then fewer exits, then enumeration order.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from tandemseg.errors import SpecError
from tandemseg.exits.calibrate import ExitCache
from tandemseg.exits.costs import CostTable
from tandemseg.exits.network import FINAL

SETTINGS = ("budgeted", "anytime", "input_dependent")
DEFAULT_IMAGE_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)
LIMITS = {"gflops": "max_gflops", "latency_ms": "max_latency_ms"}  # cost table name -> Constraint field


@dataclass(frozen=True)
class Configuration:
    """A MESS instance: early exits in depth order (budgeted: the one exit, possibly 'final') and, for the
    input-dependent setting, th_img and th_pix of each early exit."""

    setting: str
    exits: tuple[str, ...]
    thresholds: tuple[float, ...] = ()
    pixel_thresholds: tuple[float, ...] = ()

    def path(self) -> tuple[str, ...]:
        """The exits a frame may pass through, in order (the final exit closes all but budgeted paths)."""
        return self.exits if self.setting == "budgeted" else (*self.exits, FINAL)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Configuration:
        return cls(d["setting"], tuple(d["exits"]), tuple(d.get("thresholds", ())), tuple(d.get("pixel_thresholds", ())))


@dataclass
class Evaluated:
    """A configuration's scores on the calibration cache; `exit_share`: fraction of frames answered per exit."""

    config: Configuration
    miou: float
    costs: dict[str, float]
    exit_share: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"config": self.config.to_json(), "miou": self.miou, "costs": self.costs, "exit_share": self.exit_share}


@dataclass(frozen=True)
class Constraint:
    """The user's requirement: eq. 5 (objective a cost table's name) or eq. 6 (objective 'miou').

    max_miou_drop is in mIoU units against the final exit on the same cache (0.01 = 1 pp).
    """

    max_miou_drop: float | None = None
    max_gflops: float | None = None
    max_latency_ms: float | None = None
    objective: str = "gflops"


@dataclass
class SearchResult:
    best: Evaluated | None  # None when nothing satisfies the constraint
    pareto: list[Evaluated]  # non-dominated in (pareto_cost, mIoU) over the whole space, by cost
    reference: Evaluated  # the final exit alone
    evaluated: int  # configurations scored (after merging policies that act identically on the cache)
    pareto_cost: str

    def to_json(self) -> dict:
        return {"best": self.best.to_json() if self.best else None, "pareto": [e.to_json() for e in self.pareto],
                "reference": self.reference.to_json(), "evaluated": self.evaluated, "pareto_cost": self.pareto_cost}


# ----------------------------------------------------------------------------- scoring primitives


def miou_batch(cm: np.ndarray) -> np.ndarray:
    """mIoU of each (C, C) matrix in (B, C, C): mean IoU over classes present in label or prediction."""
    tp = np.diagonal(cm, axis1=1, axis2=2).astype(np.float64)  # (B, C)
    denom = cm.sum(1) + cm.sum(2) - tp  # (B, C)
    iou = np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)
    with np.errstate(invalid="ignore"):
        present = np.isfinite(iou).sum(1)
        return np.where(present > 0, np.nansum(iou, 1) / np.maximum(present, 1), np.nan)


def path_costs(table: CostTable, keys: Sequence[str], stages: Sequence[int], decide: bool) -> np.ndarray:
    """Cost of answering at each exit of a path (m+1,): b(K_j) + sum_{n<=j} (h_n + d_n) (Table 1).

    `decide`: the input-dependent policy runs at every early exit (d_n); budgeted/anytime runs have none.
    """
    out, heads = [], 0.0
    for key, stage in zip(keys, stages, strict=True):
        heads += table.heads[key] + (table.policy.get(key, 0.0) if decide and key != FINAL else 0.0)
        out.append(table.backbone[stage] + heads)
    return np.array(out)


def _score(cms_path: np.ndarray, assign: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mIoU (B,) and answer shares (B, m+1) of per-frame exit choices `assign` (B, F) over cms_path (F, m+1, C, C)."""
    f, k, c, _ = cms_path.shape
    onehot = np.eye(k)[assign]  # (B, F, m+1)
    cm = onehot.reshape(len(assign), f * k) @ cms_path.reshape(f * k, c * c).astype(np.float64)  # (B, C*C)
    return miou_batch(cm.reshape(-1, c, c)), onehot.mean(1)


# ----------------------------------------------------------------------------- enumeration


def _selections(cache: ExitCache, max_exits: int | None) -> Iterator[tuple[int, ...]]:
    """Eq. 4: per exit point, none or one of its architectures (cache indices, depth order)."""
    early = [i for i, k in enumerate(cache.keys) if k != FINAL]
    points = sorted({cache.stages[i] for i in early})
    groups = [[None, *[i for i in early if cache.stages[i] == p]] for p in points]
    for choice in itertools.product(*groups):
        sel = tuple(i for i in choice if i is not None)
        if max_exits is None or len(sel) <= max_exits:
            yield sel


def _policy_options(conf: np.ndarray, pixel_thresholds: Sequence[float], image_thresholds: Sequence[float]) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Exit decisions (F, O) of every (th_pix, th_img) for one exit, and their labels.

    Pairs that decide identically on every calibration frame are merged (the first is kept), and a pair
    that never exits is dropped: the same configuration without that exit is as accurate and cheaper.
    """
    labels = [(tp, ti) for tp in pixel_thresholds for ti in image_thresholds]
    cols = np.stack([conf[:, p] >= ti for p in range(len(pixel_thresholds)) for ti in image_thresholds], 1)  # (F, P*T)
    _, first = np.unique(cols, axis=1, return_index=True)
    keep = [i for i in sorted(first) if cols[:, i].any()]
    return cols[:, keep], [labels[i] for i in keep]


class _Tracker:
    """Keeps the best feasible configuration and the running Pareto front while chunks stream past."""

    def __init__(self, constraint: Constraint, reference_miou: float, pareto_cost: str) -> None:
        self.c, self.pareto_cost = constraint, pareto_cost
        self.min_miou = -math.inf if constraint.max_miou_drop is None else reference_miou - constraint.max_miou_drop
        self.best: Evaluated | None = None
        self.best_key: tuple | None = None
        self.front: list[Evaluated] = []
        self.count = 0

    def feasible(self, miou: np.ndarray, costs: Mapping[str, np.ndarray]) -> np.ndarray:
        ok = np.nan_to_num(miou, nan=-math.inf) >= self.min_miou - 1e-12
        for name, limit_field in LIMITS.items():
            limit = getattr(self.c, limit_field)
            if limit is not None:
                if name not in costs:
                    raise SpecError(f"a {limit_field} constraint needs a {name!r} cost table")
                ok &= costs[name] <= limit + 1e-12
        return ok

    def rank(self, miou: np.ndarray, costs: Mapping[str, np.ndarray], n_exits: int) -> np.ndarray:
        """Sort keys (B, 3): lower is better (objective, secondary, number of exits)."""
        second = costs[self.pareto_cost]
        if self.c.objective == "miou":
            first, second = -np.nan_to_num(miou, nan=-math.inf), second
        else:
            first, second = costs[self.c.objective], -np.nan_to_num(miou, nan=-math.inf)
        return np.stack([first, second, np.full(len(miou), n_exits, dtype=np.float64)], 1)

    def add(self, miou: np.ndarray, costs: Mapping[str, np.ndarray], n_exits: int, make: Callable[[int], Evaluated]) -> None:
        """Score a chunk; `make(i)` builds the Evaluated of row i (only for the few rows that are kept)."""
        self.count += len(miou)
        ok = self.feasible(miou, costs)
        if ok.any():
            keys = self.rank(miou, costs, n_exits)
            rows = np.flatnonzero(ok)
            i = rows[np.lexsort(keys[rows].T[::-1])[0]]
            if self.best_key is None or tuple(keys[i]) < self.best_key:
                self.best, self.best_key = make(i), tuple(keys[i])
        self._merge_front(miou, costs[self.pareto_cost], make)

    def _merge_front(self, miou: np.ndarray, cost: np.ndarray, make: Callable[[int], Evaluated]) -> None:
        idx = _front(cost, np.nan_to_num(miou, nan=-math.inf))
        merged = self.front + [make(i) for i in idx]
        c = np.array([e.costs[self.pareto_cost] for e in merged])
        m = np.array([e.miou for e in merged])
        self.front = [merged[i] for i in _front(c, m)]


def _front(cost: np.ndarray, miou: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points (lower cost, higher mIoU), by increasing cost; first of equals kept."""
    order = np.lexsort((-miou, cost))  # cost ascending, mIoU descending, stable
    best_before = np.concatenate([[-math.inf], np.maximum.accumulate(miou[order])[:-1]])
    return order[miou[order] > best_before]


# ----------------------------------------------------------------------------- the three settings


def _path(cache: ExitCache, sel: Sequence[int], setting: str) -> list[int]:
    return list(sel) if setting == "budgeted" else [*sel, cache.index(FINAL)]


def _costs(cache: ExitCache, costs: Mapping[str, CostTable], path: Sequence[int], decide: bool) -> dict[str, np.ndarray]:
    keys, stages = [cache.keys[i] for i in path], [cache.stages[i] for i in path]
    return {name: path_costs(t, keys, stages, decide) for name, t in costs.items()}


def _search_static(cache: ExitCache, costs: Mapping[str, CostTable], tracker: _Tracker, setting: str, max_exits: int | None) -> None:
    """Budgeted (each single exit) and anytime (each selection; accuracy of its first answer)."""
    if setting == "budgeted":
        sels: Iterator[tuple[int, ...]] = ((i,) for i in range(len(cache.keys)))
    else:
        sels = _selections(cache, max_exits)
    for sel in sels:
        path = _path(cache, sel, setting)
        miou, _ = _score(cache.cms[:, path[:1]], np.zeros((1, cache.frames), dtype=np.int64))
        total = {n: c[-1:] for n, c in _costs(cache, costs, path, decide=False).items()}  # every exit of the path runs
        config = Configuration(setting, tuple(cache.keys[i] for i in (path if setting == "budgeted" else sel)))
        share = {cache.keys[i]: 1.0 for i in path}
        tracker.add(miou, total, len(sel), lambda i, c=config, m=miou, t=total, s=share: Evaluated(c, float(m[i]), {n: float(v[i]) for n, v in t.items()}, s))


def _search_input_dependent(
    cache: ExitCache, costs: Mapping[str, CostTable], tracker: _Tracker, image_thresholds: Sequence[float],
    pixel_thresholds: Sequence[float], max_exits: int | None, chunk: int,
) -> None:
    p_idx = [cache.pixel_thresholds.index(t) for t in pixel_thresholds]
    options = {i: _policy_options(cache.confidence[:, i][:, p_idx], pixel_thresholds, image_thresholds) for i in range(len(cache.keys)) if cache.keys[i] != FINAL}
    for sel in _selections(cache, max_exits):
        path = _path(cache, sel, "input_dependent")
        cms_path, per_exit = cache.cms[:, path], _costs(cache, costs, path, decide=True)
        dims = [options[e][0].shape[1] for e in sel]
        total = math.prod(dims)
        for start in range(0, total, chunk):
            combo = np.unravel_index(np.arange(start, min(total, start + chunk)), dims) if sel else ()
            n = len(combo[0]) if sel else 1
            passed = [options[e][0][:, combo[j]].T for j, e in enumerate(sel)]  # each (B, F)
            passed.append(np.ones((n, cache.frames), dtype=bool))  # the final exit always answers
            assign = np.stack(passed, 2).argmax(2)  # (B, F): the first exit whose confidence clears its threshold
            miou, share = _score(cms_path, assign)
            mean = {name: share @ c for name, c in per_exit.items()}  # (B,): expected cost, sum_n p_n segment_n
            labels = [options[e][1] for e in sel]
            tracker.add(miou, mean, len(sel), _row_maker(cache, path, labels, combo, miou, mean, share))


def _row_maker(
    cache: ExitCache, path: Sequence[int], labels: Sequence[list[tuple[float, float]]], combo: tuple,
    miou: np.ndarray, mean: Mapping[str, np.ndarray], share: np.ndarray,
) -> Callable[[int], Evaluated]:
    """Builds the Evaluated of row i of an input-dependent chunk (only called for the rows that are kept)."""

    def make(i: int) -> Evaluated:
        policy = [labels[j][combo[j][i]] for j in range(len(labels))]  # (th_pix, th_img) per early exit
        config = Configuration("input_dependent", tuple(cache.keys[e] for e in path[:-1]),
                               tuple(t for _, t in policy), tuple(p for p, _ in policy))
        return Evaluated(config, float(miou[i]), {n: float(v[i]) for n, v in mean.items()},
                         {cache.keys[k]: float(share[i, j]) for j, k in enumerate(path)})

    return make


def search(
    cache: ExitCache, costs: Mapping[str, CostTable], setting: str = "input_dependent", constraint: Constraint | None = None,
    image_thresholds: Sequence[float] = DEFAULT_IMAGE_THRESHOLDS, pixel_thresholds: Sequence[float] | None = None,
    max_exits: int | None = None, chunk: int = 4096, pareto_cost: str | None = None,
) -> SearchResult:
    """Exhaustive search (eq. 5 or 6 under `constraint`) over eq. 4's space in one inference setting.

    `costs` maps a cost name ('gflops', 'latency_ms') to its table; `max_exits` caps the number of early
    exits (the space grows as (thresholds)^exits in the input-dependent setting); th_pix is searched over
    `pixel_thresholds` (default: every one the cache holds), th_img over `image_thresholds`.
    """
    constraint = constraint or Constraint()
    if setting not in SETTINGS:
        raise SpecError(f"unknown inference setting {setting!r}; valid: {', '.join(SETTINGS)}")
    if constraint.objective != "miou" and constraint.objective not in costs:
        raise SpecError(f"objective {constraint.objective!r} is neither 'miou' nor a cost table ({', '.join(costs)})")
    pareto_cost = pareto_cost or (constraint.objective if constraint.objective != "miou" else next(iter(costs)))
    reference = evaluate(cache, costs, Configuration("budgeted", (FINAL,)))
    tracker = _Tracker(constraint, reference.miou, pareto_cost)
    if setting == "input_dependent":
        pix = list(cache.pixel_thresholds if pixel_thresholds is None else pixel_thresholds)
        _search_input_dependent(cache, costs, tracker, image_thresholds, pix, max_exits, chunk)
    else:
        _search_static(cache, costs, tracker, setting, max_exits)
    return SearchResult(tracker.best, tracker.front, reference, tracker.count, pareto_cost)


def evaluate(cache: ExitCache, costs: Mapping[str, CostTable], config: Configuration) -> Evaluated:
    """Scores of one configuration on the cache (the same numbers the search ranks it by)."""
    path = [cache.index(k) for k in config.path()]
    if config.setting == "input_dependent":
        passed = [cache.confidence[:, e, cache.pixel_thresholds.index(p)] >= t
                  for e, t, p in zip(path[:-1], config.thresholds, config.pixel_thresholds, strict=True)]
        assign = np.stack([*passed, np.ones(cache.frames, dtype=bool)], 1).argmax(1)[None]  # (1, F)
        miou, share = _score(cache.cms[:, path], assign)
        per_exit = _costs(cache, costs, path, decide=True)
        return Evaluated(config, float(miou[0]), {n: float(share[0] @ c) for n, c in per_exit.items()},
                         {cache.keys[k]: float(share[0, j]) for j, k in enumerate(path)})
    miou, _ = _score(cache.cms[:, path[:1]], np.zeros((1, cache.frames), dtype=np.int64))
    total = {n: float(c[-1]) for n, c in _costs(cache, costs, path, decide=False).items()}
    return Evaluated(config, float(miou[0]), total, {cache.keys[k]: 1.0 for k in path})
