"""Load tests of a running `tandemseg serve`: K simulated devices posting encoded frames concurrently.

Closed loop (`rate=0`): each device sends its next frame as soon as the previous reply arrives, which
finds the peak throughput. Open loop (`rate>0`): frames are sent on a fixed schedule of `rate` frames/s
in total whatever the replies do, which measures latency at a given load (a closed loop would hide
queueing). Also: the raw batched model's throughput on the same machine, for the serving-efficiency ratio.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

import httpx
import numpy as np
import torch

from tandemseg.data.tensors import to_tensor
from tandemseg.wire import http as wire
from tandemseg.wire.messages import UploadRequest
from tandemseg.wire.payload import encode_frame, pack_probs


@dataclass(frozen=True)
class LoadSpec:
    devices: int = 4
    frames: int = 16  # per device
    height: int = 360
    width: int = 480
    codec: str = "png"
    num_classes: int = 11
    probs: bool = True  # send device probabilities (DCAM runs on the server)
    probs_scale: int = 8  # coarse map = frame / probs_scale (the device's /4 output at input scale 0.5)
    rate: float = 0.0  # total frames/s (open loop); 0 = closed loop
    timeout_s: float = 30.0
    max_seconds: float = 600.0  # stop sending after this long, whatever is left
    distinct_frames: int = 8
    seed: int = 0
    window_s: float = 60.0  # latency percentiles per window of this many seconds (a soak's stability)


def synthetic_uploads(spec: LoadSpec) -> list[tuple[bytes, bytes | None, tuple[int, int, int] | None]]:
    """`distinct_frames` encoded frames (smooth random scenes, realistic PNG sizes) with coarse probabilities."""
    rng = np.random.default_rng(spec.seed)
    out = []
    for _ in range(spec.distinct_frames):
        small = rng.integers(0, 256, (spec.height // 16 + 1, spec.width // 16 + 1, 3), dtype=np.uint8)
        image = np.kron(small, np.ones((16, 16, 1), np.uint8))[: spec.height, : spec.width]  # blocky, compressible
        image = np.clip(image.astype(np.int16) + rng.integers(-6, 7, image.shape), 0, 255).astype(np.uint8)
        probs = shape = None
        if spec.probs:
            h, w = max(1, spec.height // spec.probs_scale), max(1, spec.width // spec.probs_scale)
            p = rng.dirichlet(np.full(spec.num_classes, 0.3), size=(h, w)).transpose(2, 0, 1)
            probs, shape = pack_probs(p.astype(np.float32))
        out.append((encode_frame(image, spec.codec), probs, shape))
    return out


class _Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency_ms: list[float] = []
        self.sent_at: list[float] = []  # seconds from the start, per ok reply (same order as latency_ms)
        self.window_errors: Counter[tuple[int, str]] = Counter()
        self.errors: Counter[str] = Counter()
        self.ok = 0
        self.bytes_up = 0
        self.bytes_down = 0

    def record(self, ms: float, status: str, up: int, down: int, at: float = 0.0, window_s: float = 60.0) -> None:
        with self.lock:
            if status == "ok":
                self.ok += 1
                self.latency_ms.append(ms)
                self.sent_at.append(at)
            else:
                self.errors[status] += 1
                self.window_errors[(int(at // window_s), status)] += 1
            self.bytes_up += up
            self.bytes_down += down


def _device_loop(
    server: str, device: str, token: str, spec: LoadSpec, uploads: list, rec: _Recorder, start_at: float, offset: float, stop_at: float
) -> None:
    period = spec.devices / spec.rate if spec.rate > 0 else 0.0
    with httpx.Client(base_url=server, timeout=spec.timeout_s) as client:
        for i in range(spec.frames):
            if period:
                send_at = start_at + offset + i * period  # open loop: the schedule does not wait for replies
                delay = send_at - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            if time.perf_counter() > stop_at:
                rec.record(0.0, "not_sent_time_cap", 0, 0)
                continue
            payload, probs, shape = uploads[i % len(uploads)]
            req = UploadRequest(device, i, payload, spec.codec, spec.height, spec.width, device_probs=probs, device_probs_shape=shape)
            headers, body = wire.encode_request(req, token)
            t0 = time.perf_counter()
            try:
                r = client.post(wire.SEGMENT_PATH, content=body, headers=headers)
                status = "ok" if r.status_code == 200 else f"http_{r.status_code}"
                down = len(r.content)
            except httpx.TimeoutException:
                status, down = "timeout", 0
            except httpx.HTTPError as e:
                status, down = type(e).__name__, 0
            rec.record((time.perf_counter() - t0) * 1000.0, status, len(body), down, t0 - start_at, spec.window_s)


def run_loadtest(server: str, credentials: list[tuple[str, str]], spec: LoadSpec) -> dict:
    """K device threads against `server`; returns throughput, latency percentiles and errors by kind."""
    if not credentials:
        raise ValueError("the load test needs at least one DEVICE:TOKEN")
    uploads = synthetic_uploads(spec)
    rec = _Recorder()
    start = time.perf_counter() + 0.05
    stop_at = start + spec.max_seconds
    period = spec.devices / spec.rate if spec.rate > 0 else 0.0
    threads = [
        threading.Thread(
            target=_device_loop, daemon=True,
            args=(server.rstrip("/"), *credentials[k % len(credentials)], spec, uploads, rec, start, k * period / spec.devices, stop_at),
        )
        for k in range(spec.devices)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = np.asarray(rec.latency_ms) if rec.latency_ms else None
    sent = spec.devices * spec.frames
    return {
        "server": server, "devices": spec.devices, "frames_per_device": spec.frames, "mode": "open" if spec.rate else "closed",
        "offered_rate_fps": spec.rate or None, "frame": f"{spec.height}x{spec.width}", "codec": spec.codec, "probs": spec.probs,
        "ok": rec.ok, "errors": dict(rec.errors), "error_rate": (sent - rec.ok) / max(sent, 1),
        "wall_s": wall, "throughput_fps": rec.ok / wall if wall > 0 else None,
        **{f"latency_ms_p{p}": (float(np.percentile(lat, p)) if lat is not None else None) for p in (50, 95, 99)},
        "latency_ms_mean": float(lat.mean()) if lat is not None else None,
        "bytes_up_per_frame": rec.bytes_up / max(sent, 1), "bytes_down_per_frame": rec.bytes_down / max(rec.ok, 1),
        "latencies_ms": [round(v, 3) for v in rec.latency_ms],
        "windows": windows(rec, spec.window_s),
    }


def windows(rec: _Recorder, window_s: float) -> list[dict]:
    """Per window of `window_s` seconds (by send time): replies, errors by kind, latency percentiles."""
    at, lat = np.asarray(rec.sent_at), np.asarray(rec.latency_ms)
    n = int(max([*(at // window_s + 1).tolist(), *(k + 1 for k, _ in rec.window_errors)], default=0))
    out = []
    for w in range(n):
        sel = lat[(at >= w * window_s) & (at < (w + 1) * window_s)] if len(at) else lat
        out.append({"start_s": w * window_s, "ok": int(len(sel)),
                    "errors": {k: v for (i, k), v in rec.window_errors.items() if i == w},
                    **{f"latency_ms_p{p}": (float(np.percentile(sel, p)) if len(sel) else None) for p in (50, 99)}})
    return out


def percentiles(latencies_ms: list[float]) -> dict:
    lat = np.asarray(latencies_ms) if latencies_ms else None
    return {f"latency_ms_p{p}": (float(np.percentile(lat, p)) if lat is not None else None) for p in (50, 95, 99)}


def serving_efficiency(server: str, credentials: list[tuple[str, str]], spec: LoadSpec, model: torch.nn.Module, batch: int,
                       batches: int, rounds: int) -> dict:
    """Service throughput vs the bare batched forward, alternating them `rounds` times on the same machine.

    raw, service, raw, service, ..., raw: each service round is compared with the mean of the raw
    measurements right before and after it (the server idles during raw ones), so a shared machine's
    drifting load moves both sides of each ratio together. Reports per-round ratios and their median.
    """
    raws = [raw_batched_throughput(model, batch, spec.height, spec.width, batches)]
    rows = []
    for _ in range(rounds):
        cpu0 = server_cpu_seconds(server)
        res = run_loadtest(server, credentials, spec)
        cpu1 = server_cpu_seconds(server)
        raws.append(raw_batched_throughput(model, batch, spec.height, spec.width, batches, warmup=0))
        raw_fps = (raws[-2]["throughput_fps"] + raws[-1]["throughput_fps"]) / 2
        raw_cpu = (raws[-2]["cpu_s_per_frame"] + raws[-1]["cpu_s_per_frame"]) / 2
        cpu = (cpu1 - cpu0) / max(res["ok"], 1) if cpu0 is not None and cpu1 is not None else None
        rows.append({**res, "raw_fps": raw_fps, "efficiency_vs_raw": (res["throughput_fps"] or 0.0) / raw_fps,
                     "server_cpu_s_per_frame": cpu, "raw_cpu_s_per_frame": raw_cpu,
                     "cpu_efficiency_vs_raw": (raw_cpu / cpu) if cpu else None})
    pooled = [v for r in rows for v in r["latencies_ms"]]
    return {
        **{k: v for k, v in rows[0].items() if k not in ("latencies_ms", "throughput_fps", "efficiency_vs_raw", "raw_fps", "wall_s")},
        "rounds": [{k: v for k, v in r.items() if k != "latencies_ms"} for r in rows],
        "raw_batched": {"batch": batch, "batches": batches, "threads": torch.get_num_threads(), "fps": [r["throughput_fps"] for r in raws]},
        "throughput_fps": float(np.median([r["throughput_fps"] for r in rows])),
        "raw_fps": float(np.median([r["raw_fps"] for r in rows])),
        "efficiency_vs_raw": float(np.median([r["efficiency_vs_raw"] for r in rows])),
        "cpu_efficiency_vs_raw": _median_or_none([r["cpu_efficiency_vs_raw"] for r in rows]),
        "ok": sum(r["ok"] for r in rows), "errors": _merge([r["errors"] for r in rows]),
        "error_rate": 1.0 - sum(r["ok"] for r in rows) / max(rounds * spec.devices * spec.frames, 1),
        **percentiles(pooled), "latencies_ms": pooled,
    }


def _median_or_none(values: list[float | None]) -> float | None:
    return float(np.median(values)) if values and all(v is not None for v in values) else None


def _merge(counters: list[dict]) -> dict:
    out: Counter[str] = Counter()
    for c in counters:
        out.update(c)
    return dict(out)


@torch.inference_mode()
def raw_batched_throughput(model: torch.nn.Module, batch: int, height: int, width: int, batches: int = 4, warmup: int = 1) -> dict:
    """Frames/s of the bare model forward on batches of `batch` frames (no HTTP, no decode, no DCAM), plus the
    CPU seconds per frame this process spent (all its threads), which a busy shared machine distorts far less."""
    model.eval()
    # the very tensor the service feeds the model: uint8 HWC frames through to_tensor (a channels-last view);
    # a contiguous NCHW tensor takes a different, about 2x slower, convolution path on CPU
    rng = np.random.default_rng(0)
    x = to_tensor([rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(batch)])
    for _ in range(warmup):
        model(x)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        model(x).argmax(1)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    frames = batch * batches
    return {"batch": batch, "batches": batches, "seconds": seconds, "throughput_fps": frames / seconds,
            "ms_per_frame": 1000.0 * seconds / frames, "cpu_s_per_frame": cpu / frames, "threads": torch.get_num_threads()}


def server_cpu_seconds(server: str) -> float | None:
    """The server process's CPU seconds so far (process_cpu_seconds_total on /metrics), or None if not exposed."""
    try:
        text = httpx.get(server.rstrip("/") + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith("process_cpu_seconds_total "):
            return float(line.split()[1])
    return None
