"""A multi-exit segmenter (MESS, paper 003, sec. 3-5) wrapped around any model with timm's feature contract.

The wrapped model (`base`) must expose `feature_info` (one dict per stage: 'num_chs', 'reduction', 'module'),
`encoder.forward_intermediates(x, indices, stop_early)`, `normalize` (and `downsample` when it segments a
downsampled frame) and `decode(feats)`. Exits attach to stages by index; the final exit is `base.decode`.
Every exit's logits are resized to the frame's size, as `base.forward` does with its decoder's output.

Inference settings (sec. 5.1):
    budgeted          `forward_exit(frame, key)`: one fixed exit; the encoder stops at its stage
    anytime           `anytime(frame, keys, deadline_s)`: every exit's output is delivered as it arrives,
                      the latest one finished by the deadline is returned
    input-dependent   `input_dependent(frame, keys, thresholds)`: stop at the first exit whose image-level
                      confidence (eq. 7-9) clears its threshold; the final exit answers otherwise

Anytime and input-dependent runs go through the encoder once. Forward hooks on the stage modules named by
`feature_info[i]['module']` (timm's meaning of that field) run each exit as soon as its stage is computed,
and raise to abandon the rest of the forward when the run is done, so later stages are never computed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import nn

from tandemseg.errors import SpecError
from tandemseg.exits.confidence import logits_confidence
from tandemseg.exits.heads import ExitSpec, build_exit
from tandemseg.models.blocks import resize

FINAL = "final"  # key of the model's own decoder


def exit_key(stage: int, spec: ExitSpec) -> str:
    """'s<stage>-<spec name>', e.g. 's2-crm1-b0-rdi0-fcn' (an nn.ModuleDict key)."""
    return f"s{stage}-{spec.name}"


def parse_exit_key(key: str) -> tuple[int, ExitSpec]:
    stage, _, name = key.partition("-")
    if not stage.startswith("s") or not stage[1:].isdigit():
        raise SpecError(f"not an exit key: {key!r} (expected like 's2-crm1-b0-rdi0-fcn' or {FINAL!r})")
    return int(stage[1:]), ExitSpec.from_name(name)


def encoder_input(base: nn.Module, frame: torch.Tensor) -> torch.Tensor:
    """The encoder's input for a [0,1] frame, as the segmenter prepares it (models/segmenter.py)."""
    return base.encoder_input(frame)


@dataclass
class ExitResult:
    """One exit's output: native logits (N, C, h, w) at the exit's stage resolution, full-size on demand."""

    key: str
    stage: int
    native: torch.Tensor  # (N, C, h, w)
    size: tuple[int, int]  # the frame's (H, W)
    elapsed_s: float = 0.0  # since the run started
    confidence: float | None = None  # eq. 7-9, set by the input-dependent policy

    @cached_property
    def logits(self) -> torch.Tensor:
        return resize(self.native, self.size)  # (N, C, H, W)


@dataclass
class AnytimeResult:
    """Every exit finished by the deadline, in depth order; `latest` is what an anytime caller gets."""

    results: list[ExitResult]
    late: list[ExitResult] = field(default_factory=list)  # finished after the deadline (not usable)

    @property
    def latest(self) -> ExitResult | None:
        return self.results[-1] if self.results else None


@dataclass
class EarlyExitResult:
    """Input-dependent inference over a batch: per-frame exit taken and the confidences computed on the way."""

    logits: torch.Tensor  # (N, C, H, W)
    exits: list[str]
    confidences: list[list[float]]
    elapsed_s: list[float]


class _Done(Exception):
    """Raised from a stage hook to abandon the rest of the encoder's forward."""


class MultiExitSegmenter(nn.Module):
    """`base` plus candidate exit heads: `exit_specs[i]` (one spec or a list of candidates) at stage `exit_points[i]`."""

    def __init__(
        self, base: nn.Module, exit_points: Sequence[int], exit_specs: ExitSpec | Sequence[ExitSpec | Sequence[ExitSpec]],
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.base = base
        self.feature_info: list[dict] = list(base.feature_info)
        self.num_classes = num_classes or int(base.cfg.num_classes)
        per_point = _specs_per_point(exit_points, exit_specs)
        self.heads = nn.ModuleDict()
        self._stage: dict[str, int] = {}
        for stage, specs in sorted(per_point.items()):
            if not 0 <= stage < len(self.feature_info):
                raise SpecError(f"exit point {stage} is not a stage of the encoder (0..{len(self.feature_info) - 1})")
            for spec in specs:
                key = exit_key(stage, spec)
                self.heads[key] = build_exit(spec, self.feature_info[stage]["num_chs"], self.num_classes)
                self._stage[key] = stage

    # ------------------------------------------------------------------ structure

    @property
    def cfg(self):  # noqa: ANN201 - the base's config dataclass (what a checkpoint card records)
        return self.base.cfg

    @property
    def exit_keys(self) -> list[str]:
        """Candidate early exits in depth order (the final exit not included)."""
        return list(self.heads.keys())

    @property
    def exit_points(self) -> list[int]:
        return sorted(set(self._stage.values()))

    def stage_of(self, key: str) -> int:
        """The stage an exit reads; the final exit reads the last stage (and, through the decoder, skips)."""
        return len(self.feature_info) - 1 if key == FINAL else self._stage[key]

    def exit_config(self) -> dict:
        """JSON-able description of the heads, to rebuild the wrapper (`from_exit_config`) from a card."""
        return {"exit_points": self.exit_points, "exit_specs": [[parse_exit_key(k)[1].to_json() for k in self.exit_keys if self._stage[k] == p] for p in self.exit_points]}

    @classmethod
    def from_exit_config(cls, base: nn.Module, cfg: dict, num_classes: int | None = None) -> MultiExitSegmenter:
        specs = [[ExitSpec.from_json(s) for s in point] for point in cfg["exit_specs"]]
        return cls(base, cfg["exit_points"], specs, num_classes)

    def check_path(self, keys: Sequence[str]) -> list[str]:
        """A run's exits: known keys at strictly increasing stages, the final exit (if any) last."""
        keys = list(keys)
        for k in keys:
            if k != FINAL and k not in self.heads:
                raise SpecError(f"unknown exit {k!r}; candidates: {self.exit_keys + [FINAL]}")
        if FINAL in keys[:-1]:
            raise SpecError("the final exit can only be the last one of a path")
        early = [self._stage[k] for k in keys if k != FINAL]
        if any(b <= a for a, b in zip(early, early[1:], strict=False)):
            raise SpecError(f"a path takes at most one exit per stage, in depth order: {keys}")
        return keys

    # ------------------------------------------------------------------ training-time forward (every exit)

    def encode(self, frame: torch.Tensor, keys: Sequence[str]) -> list[torch.Tensor]:
        """Stage outputs needed by `keys`: all stages when the final exit is among them, else up to the deepest exit."""
        x = encoder_input(self.base, frame)
        if FINAL in keys:
            return self.base.encoder.forward_intermediates(x)[1]
        deepest = max(self.stage_of(k) for k in keys)
        feats = self.base.encoder.forward_intermediates(x, list(range(deepest + 1)), stop_early=True)[1]
        return feats

    def exit_native(self, key: str, feats: list[torch.Tensor]) -> torch.Tensor:
        """Native logits of one exit from the stage outputs (the decoder for the final exit)."""
        return self.base.decode(feats) if key == FINAL else self.heads[key](feats[self._stage[key]])

    def forward(self, frame: torch.Tensor, keys: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Full-size logits (N, C, H, W) of every exit in `keys` (default: every candidate and the final exit)."""
        keys = list(keys) if keys is not None else [*self.exit_keys, FINAL]
        feats = self.encode(frame, keys)
        return {k: resize(self.exit_native(k, feats), frame.shape[-2:]) for k in keys}

    # ------------------------------------------------------------------ budgeted inference

    def forward_exit(self, frame: torch.Tensor, key: str) -> torch.Tensor:
        """Budgeted inference: logits (N, C, H, W) of exit `key` alone; stages past it are not computed."""
        return self.forward(frame, [key])[key]

    # ------------------------------------------------------------------ anytime / input-dependent

    def walk(
        self, frame: torch.Tensor, keys: Sequence[str], visit: Callable[[ExitResult], bool],
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """Run the exits of `keys` in depth order as their stages complete; stop everything when `visit` says so."""
        keys = self.check_path(keys)
        size = tuple(frame.shape[-2:])
        owner = threading.get_ident()  # the hooks sit on shared modules: act only on this thread's forward
        t0 = clock()

        def deliver(key: str, feats: list[torch.Tensor]) -> None:
            res = ExitResult(key, self.stage_of(key), self.exit_native(key, feats), size)
            res.elapsed_s = clock() - t0
            if visit(res):
                raise _Done

        handles = []
        for key in (k for k in keys if k != FINAL):
            stage = self._stage[key]
            module = self.base.encoder.get_submodule(self.feature_info[stage]["module"])

            def hook(_module: nn.Module, _args: tuple, out: torch.Tensor, key: str = key, stage: int = stage) -> None:
                # The stage module's output is feature_info[stage]'s feature; the head reads only that one.
                if threading.get_ident() == owner:
                    deliver(key, _StageView(stage, out))

            handles.append(module.register_forward_hook(hook))
        try:
            x = encoder_input(self.base, frame)
            if FINAL in keys:
                feats = self.base.encoder.forward_intermediates(x)[1]
                deliver(FINAL, feats)
            elif keys:
                self.base.encoder.forward_intermediates(x, [self._stage[keys[-1]]], stop_early=True)
        except _Done:
            pass
        finally:
            for h in handles:
                h.remove()

    def anytime(
        self, frame: torch.Tensor, keys: Sequence[str], deadline_s: float | None = None,
        on_exit: Callable[[ExitResult], None] | None = None, clock: Callable[[], float] = time.perf_counter,
    ) -> AnytimeResult:
        """Anytime inference (sec. 5.1): each exit's output goes to `on_exit` as it arrives; past the deadline
        the run stops and the latest output finished in time is `result.latest` (None if none was)."""
        out = AnytimeResult([])

        def visit(res: ExitResult) -> bool:
            late = deadline_s is not None and res.elapsed_s > deadline_s
            (out.late if late else out.results).append(res)
            if on_exit is not None and not late:
                on_exit(res)
            return late

        self.walk(frame, keys, visit, clock)
        return out

    def input_dependent(
        self, frame: torch.Tensor, keys: Sequence[str], thresholds: Sequence[float],
        pixel_thresholds: float | Sequence[float] = 0.8, edge_smoothing: bool = True,
        clock: Callable[[], float] = time.perf_counter,
    ) -> EarlyExitResult:
        """Input-dependent inference (sec. 5.2): per frame, the first early exit with c_img >= its threshold.

        `keys` are the early exits in depth order (the final exit is appended); `thresholds` and
        `pixel_thresholds` hold th_img and th_pix of eq. 7 per early exit. Frames run one at a time: the
        decision is per image, so a batch would otherwise compute deep stages for frames that are done.
        """
        early = [k for k in keys if k != FINAL]
        th_img = list(thresholds)
        th_pix = [float(pixel_thresholds)] * len(early) if isinstance(pixel_thresholds, int | float) else list(pixel_thresholds)
        if len(th_img) != len(early) or len(th_pix) != len(early):
            raise SpecError(f"{len(early)} early exits need as many image and pixel thresholds, got {len(th_img)} and {len(th_pix)}")
        runs = [self._first_confident(frame[i : i + 1], early, th_img, th_pix, edge_smoothing, clock) for i in range(frame.shape[0])]
        return EarlyExitResult(
            torch.cat([r[-1].logits for r in runs]), [r[-1].key for r in runs],
            [[x.confidence for x in r if x.confidence is not None] for r in runs], [r[-1].elapsed_s for r in runs],
        )

    def _first_confident(
        self, frame: torch.Tensor, early: list[str], th_img: list[float], th_pix: list[float], edge_smoothing: bool,
        clock: Callable[[], float],
    ) -> list[ExitResult]:
        """One frame (1, 3, H, W) through `early` + final until an exit is confident; the exits seen, in order."""
        seen: list[ExitResult] = []

        def visit(res: ExitResult) -> bool:
            seen.append(res)
            if res.key == FINAL:
                return True
            j = len(seen) - 1
            res.confidence = logits_confidence(res.native[0], th_pix[j], edge_smoothing)  # eq. 7-9 on the native map
            return res.confidence >= th_img[j]

        self.walk(frame, [*early, FINAL], visit, clock)
        return seen


class _StageView:
    """feats[stage] for the one stage a hook has; any other index is a bug (a head reads only its stage)."""

    def __init__(self, stage: int, feat: torch.Tensor) -> None:
        self.stage, self.feat = stage, feat

    def __getitem__(self, i: int) -> torch.Tensor:
        if i != self.stage:
            raise IndexError(f"stage {i} is not available inside the hook of stage {self.stage}")
        return self.feat


def _specs_per_point(points: Sequence[int], specs: ExitSpec | Sequence) -> dict[int, list[ExitSpec]]:
    """Normalise the constructor's `exit_specs`: one spec for every point, or one entry (spec or list) per point."""
    if isinstance(specs, ExitSpec):
        specs = [specs] * len(points)
    if len(specs) != len(points):
        raise SpecError(f"{len(points)} exit points but {len(specs)} exit spec entries")
    out: dict[int, list[ExitSpec]] = {}
    for p, s in zip(points, specs, strict=True):
        out.setdefault(int(p), []).extend([s] if isinstance(s, ExitSpec) else list(s))
    return out
