"""Profiling (params, FLOPs, latency, memory) and the `tandemseg bench` commands on tiny models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny import CLOUD_TINY, DEVICE_TINY, run_main
from torch import nn

from tandemseg.data.classes import CAMVID
from tandemseg.eval.profile import measure_peak_memory, profile_model
from tandemseg.models.checkpoint import save_checkpoint
from tandemseg.models.flops import count_gflops
from tandemseg.models.registry import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


KEYS = {"parameters", "gflops", "latency_ms_median", "latency_ms_p90", "threads", "input_shape"}


def tiny(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(kind, DEVICE_TINY if kind == "device" else CLOUD_TINY).eval()


def test_gflops_count_two_flops_per_multiply_add() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    macs = 8 * 3 * 3 * 3 * 16 * 16  # out channels x in channels x kernel x output pixels
    assert count_gflops(conv, (1, 3, 16, 16)) == pytest.approx(2 * macs / 1e9)


def test_device_flops_are_those_of_its_reduced_input() -> None:
    """The device downsamples by input_scale=0.5 inside forward: FLOPs scale with the pixels it computes on."""
    full = count_gflops(tiny("device"), (1, 3, 128, 192))
    assert count_gflops(build_model("device", DEVICE_TINY, input_scale=1.0).eval(), (1, 3, 64, 96)) == pytest.approx(full)


def test_profile_model_without_memory() -> None:
    model = tiny("device").train()
    threads_before = torch.get_num_threads()
    r = profile_model(model, (1, 3, 64, 96), threads=1, warmup=1, runs=3, memory=False)
    assert KEYS <= set(r) and "peak_memory_mb" not in r
    assert r["parameters"] == sum(p.numel() for p in model.parameters()) > 0
    assert r["gflops"] > 0 and 0 < r["latency_ms_median"] <= r["latency_ms_p90"]
    assert r["threads"] == 1 and r["input_shape"] == [1, 3, 64, 96]
    assert torch.get_num_threads() == threads_before  # the thread setting is restored
    assert model.training  # and so is the mode


def test_peak_memory_in_a_child_process() -> None:
    """A 512x640 frame: the cloud's full-res activations are tens of MB, so the RSS rise must show.

    The parent holds 400 MB meanwhile: the child's numbers must not include it (ru_maxrss would,
    since Linux carries the forking process's high-water mark across exec)."""
    ballast = torch.ones(100_000_000)  # 400 MB resident in this process
    r = measure_peak_memory(tiny("cloud"), (1, 3, 512, 640), threads=1, runs=1)
    assert r["hwm_reset"] is True  # Linux: the high-water mark was reset, so the rise is exact, not a lower bound
    assert 5 < r["peak_memory_mb"] < 200, r
    assert r["peak_memory_mb"] < r["peak_rss_mb"] < 390, r  # the child's own peak, not the parent's
    del ballast


def test_bench_models_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    for kind in ("device", "cloud"):
        save_checkpoint(tmp_path / "checkpoints" / f"tiny-{kind}", tiny(kind), kind, CAMVID, data="synthetic", recipe="pytest",
                        metrics={"val": {"miou": 0.25}})
    monkeypatch.chdir(tmp_path)  # the default is every checkpoints/*/card.json under the working directory
    code, out, err = run_main(monkeypatch, capsys, "bench", "models", "--threads", "1", "--threads", "2", "--height", "64", "--width", "96",
                              "--warmup", "1", "--runs", "2", "--no-memory", "--json", "bench.json", "--markdown", "docs/models.md")
    assert code == 0, err
    result = json.loads((tmp_path / "bench.json").read_text())
    assert [(r["threads"], r["model"]) for r in result["models"]] == [
        (1, "tiny-cloud"), (1, "tiny-device"), (2, "tiny-cloud"), (2, "tiny-device")]  # one block per thread count
    rows = {r["model"]: r for r in result["models"] if r["threads"] == 1}
    assert rows["tiny-device"]["compute_hw"] == [32, 48] and rows["tiny-cloud"]["compute_hw"] == [64, 96]
    assert rows["tiny-device"]["onnx_latency_ms_median"] > 0 and rows["tiny-device"]["onnx_max_abs_diff"] < 1e-3
    assert rows["tiny-cloud"]["onnx_latency_ms_median"] is None  # ONNX Runtime is timed for device models only
    assert rows["tiny-device"]["val_miou"] == 0.25 and KEYS <= set(rows["tiny-cloud"])
    assert result["machine"]["torch"] == torch.__version__
    assert "tiny-device" in out and "32x48" in out
    md = (tmp_path / "docs" / "models.md").read_text()
    prefix = f"nice -n {os.nice(0)} " if os.nice(0) else ""  # the command as it ran, niceness included
    assert f"```bash\n{prefix}tandemseg bench models --threads 1 --threads 2" in md and result["command"].startswith("tandemseg bench models")
    assert "| tiny-device | device | 2 |" in md and "| 64x96 -> 32x48 |" in md and "FlopCounterMode" in md
    assert "tiny-device max |logit diff|" in md


def test_bench_models_without_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(monkeypatch, capsys, "bench", "models")
    assert code == 2
    assert err.startswith("error: no checkpoints found under checkpoints/") and "pass --ckpt DIR" in err


def test_bench_data_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """The command's plumbing; the generator and shift timings themselves are stubbed (their modules test them)."""
    calls = {}

    def fake_shifts(repeats: int = 5, severity: int = 3) -> dict[str, float]:
        calls.update(repeats=repeats, severity=severity)
        return {"fog": 4.0, "dusk": 2.0}

    monkeypatch.setattr("tandemseg.data.shifts.benchmark_shifts", fake_shifts)
    monkeypatch.setattr("tandemseg.data.synthetic.benchmark_generator", lambda n=50: {"ms_per_frame": 10.0, "frames_per_s": 100.0, "frames": n, "size": [360, 480]})
    code, out, err = run_main(monkeypatch, capsys, "bench", "data", "--frames", "2", "--repeats", "1", "--severity", "5", "--json", str(tmp_path / "data.json"))
    assert code == 0, err
    assert calls == {"repeats": 1, "severity": 5}
    result = json.loads((tmp_path / "data.json").read_text())
    assert result["generator"]["frames"] == 2 and result["shifts_ms_per_frame"] == {"fog": 4.0, "dusk": 2.0}
    assert "synthetic generator" in out and "fog:5" in out and "weather" in out and "250.0" in out  # 1000 / 4 ms


def test_cost_breakdown_times_every_step(tmp_path) -> None:
    from tandemseg.eval.cost_breakdown import cost_breakdown

    images = [np.random.default_rng(i).integers(0, 256, (64, 96, 3), dtype=np.uint8) for i in range(2)]
    result = cost_breakdown(images, tiny("device"), tiny("cloud"), repeats=1)
    m = result["medians"]
    assert result["frames"] == 2 and all(v >= 0 for v in m.values())
    assert m["png level 1 bytes"] > 0 and "cloud: DCAM update (ms)" in m
