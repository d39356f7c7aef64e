"""Replaying policies over a cache through the one runtime (the offline sweep's engine).

A sweep asks "what would this policy have uploaded, and what would the stream have scored?" for many
(policy, rate) pairs. It does not re-implement the device: it plugs replaying steps into `DeviceRuntime`
and feeds it the cache frame by frame:

    CachedModel      the ModelStep: the device's recorded coarse probabilities and time for frame i
    CachedPayload    the PayloadStep: an upload of the recorded size (plus the real device probabilities
                     when DCAM needs them)
    CachedSegmenter  the cloud Segmenter behind a real `CloudService` + `InProcessLink`: the recorded
                     label map for frame i; DCAM (ACDC eq. 13-14) and the per-device state run for real

so scoring, the controller, byte charging, DCAM and U updates are the runtime's own code. Frames are
not re-segmented, so a replay keeps no device label maps (`FrameResult.label` is None for device frames);
metrics come from the cache's per-frame confusion matrices by each frame's provenance.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from tandemseg.cloud.dcam import DcamSettings
from tandemseg.cloud.service import CloudService
from tandemseg.device.budget import BudgetSpec, Controller, FixedSelection, make_controller
from tandemseg.device.link import InProcessLink
from tandemseg.device.policies import Policy, make_policy
from tandemseg.device.runtime import DeviceRuntime, FrameResult
from tandemseg.device.steps import DeviceOutput, attach_probs
from tandemseg.device.uncertainty import UncertaintyMatrix
from tandemseg.eval.cache import CollabCache, frame_size
from tandemseg.eval.oracle import GreedyOracle, frame_gains, target_count
from tandemseg.wire.messages import UploadRequest
from tandemseg.wire.payload import pack_probs

HINDSIGHT = "hindsight"  # budget mode: per-stream top-k by score (non-causal), see replay_run
REPLAY_DEVICE = "replay"  # the device id a replay's cloud keeps its state under


class CachedModel:
    """ModelStep: frame i's recorded device view (frames are addressed by id; pass frame=None)."""

    def __init__(self, cache: CollabCache) -> None:
        self.cache = cache

    def run(self, frame: np.ndarray | None, frame_id: int) -> DeviceOutput:
        if frame is not None:
            raise ValueError("a cached model step replays recorded frames by id: pass frame=None")
        c = self.cache
        return DeviceOutput(c.probs[frame_id], None, float(c.device_ms[frame_id]), frame_size(c, frame_id))


class CachedPayload:
    """PayloadStep: an upload of the size the cache recorded for frame i.

    The image bytes are a zero-filled stand-in of the recorded encoded size: the replaying cloud answers from
    its cache and never decodes them, while byte budgets and byte figures see the real size. The device's
    probabilities, when sent, are the real packed bytes (DCAM reads them)."""

    def __init__(self, cache: CollabCache, device_id: str = REPLAY_DEVICE, send_device_probs: bool = False) -> None:
        self.cache = cache
        self.device_id = device_id
        self.send_device_probs = send_device_probs
        self._cache_sent_probs = bool(cache.info.get("send_device_probs", False))

    def image_bytes(self, frame_id: int) -> int:
        """The encoded frame's size (the cache's upload size less the probabilities it carried, if any)."""
        size = int(self.cache.bytes_up[frame_id])
        if self._cache_sent_probs:
            size -= len(pack_probs(self.cache.probs[frame_id].numpy())[0])
        return size

    def build(self, frame: np.ndarray | None, frame_id: int, device: DeviceOutput, u_version: int) -> UploadRequest:
        h, w = device.size
        codec = f"replay:{self.cache.info.get('codec', 'png')}"
        request = UploadRequest(self.device_id, frame_id, bytes(self.image_bytes(frame_id)), codec, h, w, u_version=u_version)
        attach_probs(request, device, self.send_device_probs)
        return request


class CachedSegmenter:
    """The cloud's Segmenter in a replay: frame i's recorded label map and compute time."""

    def __init__(self, cache: CollabCache) -> None:
        self.cache = cache

    def predict(self, requests: list[UploadRequest]) -> tuple[list[np.ndarray], list[float], list[None]]:
        """The recorded maps; no probabilities (a replay scores fused frames from the cache's matrices)."""
        return ([self.cache.cloud_pred[r.frame_id] for r in requests], [float(self.cache.cloud_ms[r.frame_id]) for r in requests],
                [None] * len(requests))


@dataclass
class DcamConfig:
    """DCAM in the loop (ACDC eq. 13-14): the cloud updates U from each uploaded frame's pseudo-label."""

    alpha: float
    initial_u: np.ndarray  # what the cloud starts from for this device
    settings: DcamSettings = field(default_factory=DcamSettings)  # U_new fitted as the device's U was (its metadata)


@dataclass
class Replay:
    mask: np.ndarray  # (N,) uploaded
    scores: np.ndarray  # (N,)
    score_ms: np.ndarray  # (N,) policy + controller time per frame
    controller: dict
    u_updates: int = 0

    @classmethod
    def of(cls, results: list[FrameResult], controller: dict, start_version: int = 0) -> Replay:
        """The decisions of a replay; every upload must have been answered (the cache cannot miss a frame)."""
        lost = [r.frame_id for r in results if r.uploaded and r.provenance != "cloud"]
        if lost:
            raise RuntimeError(f"replayed uploads of frames {lost[:5]} got no answer from the cache ({results[lost[0]].provenance})")
        versions = [start_version] + [r.u_version for r in results]
        updates = sum(int(b > a) for a, b in zip(versions[:-1], versions[1:], strict=True))
        return cls(np.array([r.uploaded for r in results], dtype=bool), np.array([r.score for r in results], dtype=np.float64),
                   np.array([r.score_ms for r in results]), controller, updates)


def replay(cache: CollabCache, policy: Policy, controller: Controller, dcam: DcamConfig | None = None,
           uncertainty: UncertaintyMatrix | None = None) -> Replay:
    """Run the runtime over the cached frames in order with the replaying steps (module docstring).

    `uncertainty` is the device's U (the one the policy holds): DCAM's replies replace it in place, as on a
    device. Causal as the runtime is: frame i's decision reads frames <= i only (tests/test_causality.py)."""
    service = CloudService(CachedSegmenter(cache), cache.classes, dcam_alpha=dcam.alpha if dcam else 0.0,
                           initial_u=dcam.initial_u if dcam else None, dcam_settings=dcam.settings if dcam else None)
    send = dcam is not None and dcam.alpha > 0
    runtime = DeviceRuntime(CachedModel(cache), policy, controller, InProcessLink(service), uncertainty=uncertainty,
                            payload=CachedPayload(cache, REPLAY_DEVICE, send))
    start = runtime.u_version
    results = [runtime.finish(runtime.process(None, i)) for i in range(cache.frames)]
    runtime.close()
    return Replay.of(results, controller.summary(), start)


@dataclass
class PolicyRun:
    """How to build one (policy, budget) run; fresh objects each time so runs never share state."""

    policy: str
    budget: BudgetSpec
    uncertainty: UncertaintyMatrix | None = None
    seed: int = 0
    dcam_alpha: float = 0.0
    params: dict = field(default_factory=dict)

    def make(self, cache: CollabCache | None = None, oracle_frames: np.ndarray | None = None) -> tuple[Policy, Controller, UncertaintyMatrix | None]:
        """Fresh policy, controller and U copy. The cache is read by the oracle policy only: the controller is built
        from the budget alone (a bytes budget starts from its fixed prior payload size, never from the stream's
        sizes), exactly as the HTTP path (eval/device_stream.py) builds it without any cache."""
        u = copy.deepcopy(self.uncertainty)
        params = dict(self.params)
        if self.policy == "random":
            params.setdefault("seed", self.seed)
        if self.policy == "oracle":
            if cache is None or oracle_frames is None:
                raise ValueError("the oracle policy needs the cache of the stream and the oracle's frames")
            params["gains"] = dict(enumerate(frame_gains(cache).tolist()))
        policy = make_policy(self.policy, u, **params)
        if self.policy == "oracle":
            controller: Controller = FixedSelection(np.flatnonzero(oracle_frames), cache.frames)
        elif self.budget.mode == HINDSIGHT:
            controller = FixedSelection([], cache.frames if cache is not None else None)  # scores only; see replay_run
        else:
            controller = make_controller(self.budget)
        return policy, controller, u

    def dcam(self) -> DcamConfig | None:
        if self.dcam_alpha > 0 and self.uncertainty is not None:
            # the cloud fits U_new with the settings the device's U was fitted with (its metadata), not defaults
            return DcamConfig(self.dcam_alpha, self.uncertainty.u, DcamSettings.from_meta(self.uncertainty.meta))
        return None

    def target_rate(self, controller_summary: dict | None = None) -> float:
        """The rate this run was asked for: 1 / 0 for all / none, the rate a bytes budget affords by the end of
        the stream (its controller's running payload estimate), else the budget's rate."""
        if self.policy in ("all", "none"):
            return 1.0 if self.policy == "all" else 0.0
        if self.budget.bytes_per_s is not None:
            if controller_summary is None:
                raise ValueError("a bytes budget's target rate comes from its controller's summary")
            return float(controller_summary["target_rate"])
        return float(self.budget.rate or 0.0)


def replay_run(cache: CollabCache, run: PolicyRun, oracle: GreedyOracle | None = None) -> Replay:
    """Replay one run; with budget mode 'hindsight' the scores come from a replay and the k = round(r N)
    best-scored frames of the whole stream are taken (a per-stream threshold, as ACDC's tau_s of eq. 10
    set to hit the rate: not causal, evaluation only, isolates a score's ranking from the controller)."""
    oracle_mask = (oracle or GreedyOracle(cache)).at_rate(run.budget.rate or 0.0) if run.policy == "oracle" else None
    policy, controller, u = run.make(cache, oracle_mask)
    if run.budget.mode != HINDSIGHT or run.policy == "oracle":
        return replay(cache, policy, controller, run.dcam(), u)
    rep = replay(cache, policy, controller, None, u)
    if policy.fixed is not None:
        return rep
    rep.mask = top_k_mask(rep.scores, target_count(run.budget.rate or 0.0, cache.frames))
    rep.controller = {"target_rate": run.budget.rate, "mode": HINDSIGHT}
    return rep


def top_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """The k highest finite scores (earlier frame first among ties)."""
    order = np.argsort(-scores, kind="stable")
    order = order[np.isfinite(scores[order])][:k]
    mask = np.zeros(len(scores), dtype=bool)
    mask[order] = True
    return mask
