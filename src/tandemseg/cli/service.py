"""`tandemseg serve`, `tandemseg device`, `tandemseg loadtest`, `tandemseg bench payload`: thin wrappers over cloud/,
device/http_link.py and eval/."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.table import Table

from tandemseg.cli.common import console, metrics_table, out, progress, write_json
from tandemseg.cloud.auth import TOKENS_ENV, TokenMap
from tandemseg.cloud.batching import BatchConfig
from tandemseg.errors import SpecError, TandemsegError
from tandemseg.eval.payload_bytes import CODECS, payload_bytes
from tandemseg.wire.http import WireLimits


def load_tokens(tokens: Path | None) -> TokenMap:
    return TokenMap.from_file(tokens) if tokens else TokenMap.from_env()


def parse_autoscale(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    lo, sep, hi = text.partition(":")
    try:
        pair = (int(lo), int(hi))
    except ValueError:
        pair = None
    if not sep or pair is None or not 1 <= pair[0] <= pair[1]:
        raise SpecError(f"--autoscale takes MIN:MAX replicas with 1 <= MIN <= MAX, got {text!r}")
    return pair


def serve(
    cloud_ckpt: Path = typer.Option(..., help="cloud checkpoint folder"),
    host: str = typer.Option("127.0.0.1", help="address to bind (0.0.0.0 for every interface)"),
    port: int = typer.Option(8080, min=0, max=65535, help="TCP port"),
    tokens: Path = typer.Option(None, help=f"file of DEVICE:TOKEN lines (default: the {TOKENS_ENV} variable)"),
    uncertainty: Path = typer.Option(None, help="U every device starts from (DCAM updates it per device); a device may PUT its own"),
    codec_ckpt: Path = typer.Option(None, help="JD feature codec checkpoint: devices may then upload features (codec 'features')"),
    dcam_alpha: float = typer.Option(0.1, help="DCAM update weight alpha (ACDC eq. 14); 0 = off"),
    max_batch: int = typer.Option(8, min=1, help="dynamic batching: most frames per forward"),
    max_wait_ms: float = typer.Option(10.0, min=0.0, help="dynamic batching: wait at most this long after a batch's first frame"),
    max_queue: int = typer.Option(64, min=1, help="frames waiting for a batch before new ones get 503 + Retry-After"),
    pipeline: int = typer.Option(1, min=1, max=8, help="batches in flight at once; on CPU, --threads 1 --pipeline <cores> served 1.8x the frames/s of one 2-thread forward on 2 cores (docs/results/service.md)"),
    max_inflight_per_device: int = typer.Option(32, min=1, help="requests one device may have in flight (429 beyond)"),
    max_body_mb: float = typer.Option(8.0, min=0.01, help="largest request body (413 beyond)"),
    max_side: int = typer.Option(None, min=16, help="largest frame side in pixels (413 beyond); default: twice the side of the "
                                 "frames the served model was trained on (its card's frame_hw), 4096 for a card without one"),
    metrics_public: bool = typer.Option(False, help="answer /metrics for every client (default: loopback clients only)"),
    threads: int = typer.Option(0, min=0, help="torch CPU threads (0 = torch's default)"),
    warmup: str = typer.Option(None, help="HxW: run every batch size once at this frame size before serving (no first-request stalls)"),
    adapt_device_ckpt: Path = typer.Option(None, "--adapt", help="CEMA: adapt on uploads and distil into this device checkpoint; "
                                            "devices fetch the adapted weights from GET /v1/devices/{id}/model"),
    adapt_option: list[str] = typer.Option([], "--adapt-option", help="--adapt: a setting key=value (cloud/adaptation/config.py), repeatable"),
    ray: bool = typer.Option(False, "--ray", help="deploy on Ray Serve instead of one uvicorn process"),
    replicas: int = typer.Option(1, min=1, help="--ray: segmenter replicas"),
    autoscale: str = typer.Option(None, help="--ray: MIN:MAX replicas, autoscaled by Ray Serve (overrides --replicas)"),
    replica_cpus: float = typer.Option(1.0, min=0.0, help="--ray: CPUs each segmenter replica reserves"),
    ray_address: str = typer.Option(None, help="--ray: an existing cluster (HEAD:6379 or ray://HEAD:10001); default: start a local Ray"),
    log_level: str = typer.Option("warning", help="uvicorn log level"),
) -> None:
    """Serve the cloud model over HTTP: POST /v1/segment, GET /v1/health, /metrics, /docs (see docs/protocol.md)."""
    from tandemseg.cloud.app import Limits

    if not 0.0 <= dcam_alpha <= 1.0:
        raise SpecError(f"--dcam-alpha must be in [0, 1], got {dcam_alpha}")
    token_map = load_tokens(tokens)
    max_side = max_side or served_max_side(cloud_ckpt)
    limits = Limits(WireLimits(max_body_bytes=int(max_body_mb * 1024 * 1024), max_side=max_side, max_pixels=max_side * max_side),
                    max_inflight_per_device=max_inflight_per_device, metrics_public=metrics_public)
    batching = BatchConfig(max_batch, max_wait_ms, max_queue, pipeline)
    initial_u, settings = initial_u_and_dcam_settings(uncertainty, cloud_ckpt)
    if ray and codec_ckpt:
        raise SpecError("--codec-ckpt is served by the uvicorn server; the Ray deployment decodes images only (drop --ray)")
    if ray:
        adapt = None
        if adapt_device_ckpt:
            from tandemseg.cli.adapt import parse_options
            from tandemseg.cloud.adaptation.config import AdaptConfig

            adapt = (str(Path(adapt_device_ckpt).resolve()), AdaptConfig.from_options(parse_options(adapt_option)))
        _serve_ray(cloud_ckpt, token_map, limits, batching, dcam_alpha, initial_u, settings, host, port, replicas, autoscale,
                   replica_cpus, threads, ray_address, adapt)
        return
    import torch
    import uvicorn

    from tandemseg.cloud.app import create_app
    from tandemseg.cloud.service import CloudService, ModelSegmenter
    from tandemseg.models.checkpoint import load_checkpoint

    if threads:
        torch.set_num_threads(threads)
    ck = load_checkpoint(cloud_ckpt, expect_kind="cloud")
    feature_codec = None
    if codec_ckpt:
        from tandemseg.codec.checkpoint import load_codec

        feature_codec = load_codec(codec_ckpt).codec
        if feature_codec.cfg.num_classes != ck.classes.num_classes:
            raise SpecError(f"{codec_ckpt} predicts {feature_codec.cfg.num_classes} classes but {cloud_ckpt} predicts {ck.classes.num_classes}")
    adaptation = _adaptation(ck, adapt_device_ckpt, adapt_option) if adapt_device_ckpt else None
    service = CloudService(ModelSegmenter(ck.model, feature_codec), ck.classes, dcam_alpha=dcam_alpha, initial_u=initial_u, dcam_settings=settings,
                           adaptation=adaptation)
    if warmup:
        from tandemseg.cloud.app import warm_up

        h, w = _parse_hw(warmup)
        console.print(f"warm-up: batch sizes 1..{max_batch} at {h}x{w} took {warm_up(ck.model, h, w, max_batch):.1f} s")
    app = create_app(service, token_map, limits, batching)
    console.print(f"serving {cloud_ckpt} on http://{host}:{port} for devices {', '.join(token_map.devices)} "
                  f"(batch <= {max_batch}, wait <= {max_wait_ms} ms, DCAM alpha {dcam_alpha} with {settings}, torch threads {torch.get_num_threads()})")
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


def served_max_side(cloud_ckpt: Path) -> int:
    """The accepted frame size follows the served model: twice the side of the frames it was trained on (a frame
    larger than that only costs memory and time without helping the model), 4096 when its card does not say."""
    from tandemseg.models.checkpoint import read_card

    frame_hw = read_card(cloud_ckpt).get("frame_hw")
    return 2 * max(int(v) for v in frame_hw) if frame_hw else 4096


def _adaptation(cloud, device_ckpt: Path, options: list[str]):
    """The CEMA worker of `serve --adapt`: the cloud model adapts, a copy of the device checkpoint is the student."""
    from tandemseg.cli.adapt import parse_options
    from tandemseg.cloud.adaptation.config import AdaptConfig
    from tandemseg.cloud.adaptation.service import AdaptationService
    from tandemseg.models.checkpoint import load_checkpoint

    config = AdaptConfig.from_options(parse_options(options))
    device = load_checkpoint(device_ckpt, expect_kind="device", expect_classes=cloud.classes).model
    console.print(f"adaptation on: student {device_ckpt}, {config.to_json()}")
    return AdaptationService(cloud.model, device, cloud.classes.num_classes, config)


def _parse_hw(text: str) -> tuple[int, int]:
    h, sep, w = text.lower().partition("x")
    if not (sep and h.isdigit() and w.isdigit() and int(h) > 0 and int(w) > 0):
        raise SpecError(f"--warmup takes HxW, e.g. 360x480, got {text!r}")
    return int(h), int(w)


def initial_u_and_dcam_settings(uncertainty: Path | None, cloud_ckpt: Path):
    """(U every device starts from, DCAM settings): DCAM fits U_new as that U was fitted (its metadata:
    eq. 5 reading, lambda, gamma, feature); without a U file, the fit's defaults."""
    from tandemseg.cloud.dcam import DcamSettings

    if uncertainty is None:
        return None, DcamSettings()
    from tandemseg.data.classes import ClassTable
    from tandemseg.device.uncertainty import UncertaintyMatrix
    from tandemseg.models.checkpoint import read_card

    classes = ClassTable.from_json(read_card(cloud_ckpt)["classes"])
    um = UncertaintyMatrix.load(uncertainty, expect_classes=classes)
    try:
        return um.u, DcamSettings.from_meta(um.meta)
    except (TypeError, ValueError) as e:
        raise SpecError(f"{uncertainty}: its fit settings cannot drive DCAM ({e}); refit it with `tandemseg fit-uncertainty`") from None


def _serve_ray(ckpt, token_map, limits, batching, alpha, initial_u, settings, host, port, replicas, autoscale, replica_cpus, threads,
               address, adapt=None) -> None:
    from ray import serve as ray_serve

    from tandemseg.cloud.ray_app import RayOptions, build_ray_app, start_ray, stop_ray

    options = RayOptions(replicas, parse_autoscale(autoscale), replica_cpus, threads, batching)
    app = build_ray_app(str(Path(ckpt).resolve()), token_map, limits, alpha, initial_u, options, settings, adapt)
    start_ray(address, host, port)
    console.print(f"Ray Serve: {replicas if not autoscale else autoscale} segmenter replica(s) on http://{host}:{port}; Ctrl-C stops")
    try:
        ray_serve.run(app, blocking=True, route_prefix="/")
    except KeyboardInterrupt:
        pass
    finally:
        stop_ray()


def device(
    server: str = typer.Option(..., help="base URL of `tandemseg serve`, e.g. http://127.0.0.1:8080"),
    token: str = typer.Option(None, help="this device's token (default: the TANDEMSEG_TOKEN variable)"),
    data: str = typer.Option("synthetic", help="dataset spec"),
    split: str = typer.Option("val", help="split to stream"),
    shift: str = typer.Option("clean", help="clean | NAME:SEVERITY | dusk | night | stream:SPEC"),
    device_ckpt: Path = typer.Option(..., help="device checkpoint folder"),
    uncertainty: Path = typer.Option(None, help="U file (acdc policies; the cloud's DCAM updates it)"),
    policy: str = typer.Option("acdc", help="upload policy (as in `collab`)"),
    rate: float = typer.Option(0.1, help="target upload rate (fraction of frames)"),
    controller: str = typer.Option("window", help="budget controller: window | sa"),
    bytes_per_s: float = typer.Option(None, help="bytes/s budget instead of --rate"),
    fps: float = typer.Option(10.0, help="frame rate for --bytes-per-s (and --pace)"),
    pace: bool = typer.Option(False, help="stream at --fps in real time (default: as fast as the device runs)"),
    codec: str = typer.Option("png", help="upload codec: png | jpeg:Q | webp:Q | features (JD bitstreams; needs --feature-codec)"),
    feature_codec: Path = typer.Option(None, help="JD feature codec checkpoint trained for --device-ckpt (with --codec features)"),
    dcam: bool = typer.Option(True, help="send the coarse probabilities so the cloud's DCAM adapts U (eq. 13-14)"),
    fusion: str = typer.Option("none", help="ACDC CFE: none | refine (refined device maps) | cfe (refine + fuse with the cloud's probabilities)"),
    fusion_ckpt: Path = typer.Option(None, help="CFE checkpoint trained for --device-ckpt (`tandemseg fusion train`)"),
    limit: int = typer.Option(None, help="first N frames only"),
    seed: int = typer.Option(0, help="seed of shifts and of the random policy"),
    deadline_ms: float = typer.Option(2000.0, help="a frame waits at most this long for the cloud, then keeps the device's map"),
    max_lag: int = typer.Option(8, min=0, help="frames awaiting the cloud before the oldest is finished (0 = one at a time, as `collab`)"),
    timeout_s: float = typer.Option(5.0, help="HTTP timeout per attempt"),
    retries: int = typer.Option(2, min=0, help="retries per upload (exponential backoff with jitter)"),
    cloud_ckpt: Path = typer.Option(None, help="optional local copy of the cloud model: adds cloud/oracle mIoU to the JSON"),
    threads: int = typer.Option(0, min=0, help="torch CPU threads on the device (0 = torch's default)"),
    json_path: Path = typer.Option(None, "--json", help="write the results here"),
) -> None:
    """Stream frames through the device runtime with the HTTP link; every frame gets a final map."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    from tandemseg.device.http_link import RetryPolicy
    from tandemseg.eval.device_stream import StreamConfig

    token = token or os.environ.get("TANDEMSEG_TOKEN")
    if not token:
        raise SpecError("give --token (or set TANDEMSEG_TOKEN): the device's bearer token for the server")
    if deadline_ms <= 0 or timeout_s <= 0:
        raise SpecError("--deadline-ms and --timeout-s must be > 0")
    retry = RetryPolicy(attempts=retries + 1, timeout_s=timeout_s, deadline_s=max(deadline_ms / 1000.0, timeout_s))
    from tandemseg.cli.offload import check_fusion_args, load_fuse_step
    from tandemseg.eval.device_stream import run_device_client

    check_fusion_args(fusion, fusion_ckpt)

    payload = run_device_client(
        server, token, data, split, shift, device_ckpt, uncertainty, policy, rate, controller, bytes_per_s, fps, codec, dcam,
        limit, seed, retry, StreamConfig(deadline_ms / 1000.0, max_lag, fps if pace else 0.0), cloud_ckpt, progress_bar=progress,
        feature_codec=feature_codec, fuse_factory=lambda model, classes: load_fuse_step(fusion, fusion_ckpt, model, classes),
    )
    payload["fusion"], payload["fusion_ckpt"] = fusion, str(fusion_ckpt) if fusion_ckpt else None
    print_device(payload)
    write_json(json_path, payload)


def print_device(p: dict) -> None:
    keys = ("device_miou", "cloud_miou", "collab_miou", "upload_rate", "from_cloud", "fallbacks", "u_updates_applied",
            "rtt_ms_p50", "rtt_ms_p95", "rtt_ms_p99", "bytes_up_per_frame", "bytes_down_per_frame", "stream_fps")
    out.print(metrics_table(f"device {p['device_id']} via {p['server']}: {p['policy']} at target {p['target_rate']}", p, keys))
    if p.get("fallback_reasons"):
        console.print(f"fallbacks: {p['fallback_reasons']}; link failures: {p['link']['failures']}")


def loadtest(
    server: str = typer.Option(..., help="base URL of `tandemseg serve`"),
    devices: int = typer.Option(4, min=1, help="concurrent simulated devices"),
    frames: int = typer.Option(16, min=1, help="frames per device"),
    tokens: Path = typer.Option(None, help=f"DEVICE:TOKEN file (default: {TOKENS_ENV}); devices beyond the list reuse tokens"),
    height: int = typer.Option(360, min=8),
    width: int = typer.Option(480, min=8),
    codec: str = typer.Option("png", help="png | jpeg:Q | webp:Q"),
    probs: bool = typer.Option(True, help="send device probabilities (the server runs DCAM)"),
    rate: float = typer.Option(0.0, min=0.0, help="open loop at this many frames/s in total; 0 = closed loop (peak)"),
    timeout_s: float = typer.Option(60.0, help="HTTP timeout per request"),
    max_seconds: float = typer.Option(600.0, help="stop sending after this long"),
    window_s: float = typer.Option(60.0, min=1.0, help="latency percentiles per window of this many seconds (soak stability)"),
    raw_ckpt: Path = typer.Option(None, help="also time the bare batched forward of this cloud checkpoint here (serving efficiency)"),
    raw_batch: int = typer.Option(8, min=1, help="batch size of the raw forward (use the server's --max-batch)"),
    raw_batches: int = typer.Option(4, min=1, help="timed raw batches per measurement"),
    rounds: int = typer.Option(3, min=1, help="with --raw-ckpt: alternate raw and service this many times (median ratio)"),
    threads: int = typer.Option(0, min=0, help="torch threads for the raw forward (use the server's)"),
    json_path: Path = typer.Option(None, "--json", help="write the results here"),
) -> None:
    """K concurrent simulated devices against a running server: throughput, latency percentiles, errors."""
    import httpx

    from tandemseg.eval.loadtest import LoadSpec, run_loadtest, serving_efficiency

    creds = load_tokens(tokens).credentials()
    try:
        health = httpx.get(server.rstrip("/") + "/v1/health", timeout=10).json()
    except (httpx.HTTPError, ValueError) as e:
        raise TandemsegError(f"cannot reach {server}/v1/health ({e}); is `tandemseg serve` running?") from None
    spec = LoadSpec(devices, frames, height, width, codec, int(health["classes"]), probs, rate=rate, timeout_s=timeout_s, max_seconds=max_seconds,
                    window_s=window_s)
    mode = f"open loop at {rate:.2f} frames/s" if rate else "closed loop"
    console.print(f"{devices} devices x {frames} frames ({height}x{width} {codec}) against {server} ({mode})"
                  + (f", {rounds} rounds against the raw forward of {raw_ckpt}" if raw_ckpt else ""))
    if raw_ckpt is not None:
        import torch

        from tandemseg.models.checkpoint import load_checkpoint

        if threads:
            torch.set_num_threads(threads)
        model = load_checkpoint(raw_ckpt, expect_kind="cloud").model
        result = serving_efficiency(server, creds, spec, model, raw_batch, raw_batches, rounds)
    else:
        result = run_loadtest(server, creds, spec)
    table = Table(title=f"load test: {devices} devices")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("ok", "error_rate", "throughput_fps", "latency_ms_p50", "latency_ms_p95", "latency_ms_p99", "bytes_up_per_frame",
                "efficiency_vs_raw", "cpu_efficiency_vs_raw"):
        v = result.get(key)
        table.add_row(key, "-" if v is None else (str(v) if isinstance(v, int) else f"{v:.3f}"))
    if "raw_fps" in result:
        table.add_row("raw batched fps (median of rounds)", f"{result['raw_fps']:.3f}")
    out.print(table)
    if result["errors"]:
        console.print(f"errors: {result['errors']}")
    write_json(json_path, result)


def payload(
    data: str = typer.Option("synthetic", help="dataset spec"),
    split: str = typer.Option("val", help="split whose first frames are encoded"),
    device_ckpt: Path = typer.Option(..., help="device checkpoint folder (its probabilities and label map are the side payloads)"),
    frames: int = typer.Option(20, min=1, help="frames to average over"),
    codecs: str = typer.Option(",".join(CODECS), help="comma-separated frame codecs"),
    json_path: Path = typer.Option(None, "--json", help="write the results here"),
) -> None:
    """Bytes per frame on the wire: each frame codec, the device probabilities DCAM needs, a label map, U."""
    from tandemseg.data.spec import open_dataset
    from tandemseg.models.checkpoint import load_checkpoint
    from tandemseg.wire.payload import parse_codec

    names = [str(parse_codec(c)) for c in codecs.split(",") if c.strip()]
    dataset = open_dataset(data, split)
    model = load_checkpoint(device_ckpt, expect_kind="device", expect_classes=dataset.classes).model
    result = payload_bytes(dataset, model, names, frames)
    rows = {f"{c} bytes/frame": v["bytes_mean"] for c, v in result["codecs"].items()}
    rows.update({"device probs bytes": result["device_probs_bytes_mean"], "label PNG bytes": result["label_png_bytes_mean"]})
    out.print(metrics_table(f"bytes per frame, {result['frames']} frames of {data} {split}", rows, rows))
    write_json(json_path, result)
