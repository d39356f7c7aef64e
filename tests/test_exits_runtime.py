"""MESS in the device runtime and through its commands: an early exit answers on the device and is never uploaded,
the final exit keeps the frame an upload candidate, the result records the exit and its GFLOPs; `exits train`
(stage 1 and 2), `exits search` (train split only) and `exits eval` on the committed synthetic device."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _service_helpers import frame, tiny_cloud
from _tiny import DEVICE_TINY, run_main

from tandemseg.cloud.service import CloudService, ModelSegmenter
from tandemseg.data.classes import CAMVID
from tandemseg.device.budget import BudgetSpec, make_controller
from tandemseg.device.link import InProcessLink
from tandemseg.device.policies import make_policy
from tandemseg.device.runtime import DeviceRuntime
from tandemseg.device.steps import ExitModel
from tandemseg.exits.heads import ExitSpec
from tandemseg.exits.network import FINAL, MultiExitSegmenter
from tandemseg.exits.search import Configuration
from tandemseg.models.registry import build_model

H, W = 64, 96
REPO = Path(__file__).resolve().parents[1]
DEVICE = REPO / "checkpoints/synthetic-device"


@pytest.fixture(scope="module")
def net() -> MultiExitSegmenter:
    torch.manual_seed(0)
    net = MultiExitSegmenter(build_model("device", DEVICE_TINY), [1, 2], ExitSpec())
    net.train()
    with torch.no_grad():
        net(torch.rand(2, 3, H, W))  # non-trivial BatchNorm statistics
    return net.eval()


def runtime(net: MultiExitSegmenter, threshold: float) -> DeviceRuntime:
    """Input-dependent MESS with one early exit at image threshold `threshold`; policy `all`: every candidate is sent."""
    config = Configuration("input_dependent", (net.exit_keys[0],), (threshold,), (0.5,))
    step = ExitModel(net, config, {net.exit_keys[0]: 0.1, FINAL: 1.0})
    link = InProcessLink(CloudService(ModelSegmenter(tiny_cloud()), CAMVID))
    return DeviceRuntime(step, make_policy("all"), make_controller(BudgetSpec(rate=0.5)), link)


def test_an_early_exit_stays_on_the_device_and_matches_that_exit_alone(net) -> None:
    rt = runtime(net, threshold=0.0)  # c_img >= 0 always: the first exit answers every frame
    for i in range(3):
        image = frame(i, H, W)
        res = rt.finish(rt.process(image, i))
        assert res.exit == net.exit_keys[0] and not res.uploaded and res.provenance == "device" and res.device_gflops == 0.1
        with torch.no_grad():
            alone = net.forward_exit(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, net.exit_keys[0])
        assert np.array_equal(res.label, alone.argmax(1)[0].numpy())


def test_the_final_exit_keeps_the_frame_an_upload_candidate(net) -> None:
    rt = runtime(net, threshold=1.01)  # never confident: every frame runs to the final exit
    results = [rt.finish(rt.process(frame(i, H, W), i)) for i in range(3)]
    assert all(r.exit == FINAL and r.device_gflops == 1.0 for r in results)
    assert all(r.uploaded and r.provenance == "cloud" for r in results)  # policy all sends every candidate


@pytest.mark.skipif(not (DEVICE / "card.json").is_file(), reason="committed synthetic checkpoints not present")
def test_exits_train_search_eval_commands(tmp_path: Path, monkeypatch, capsys) -> None:
    s1, s2, searched = tmp_path / "s1", tmp_path / "s2", tmp_path / "mess"
    common = ["--data", "synthetic", "--epochs", "1", "--val-limit", "2", "--train-limit", "4"]
    code, _, err = run_main(monkeypatch, capsys, "exits", "train", "--stage", "1", "--device-ckpt", str(DEVICE), "--out", str(s1), *common)
    assert code == 0, err
    code, _, err = run_main(monkeypatch, capsys, "exits", "train", "--stage", "2", "--init", str(s1), "--out", str(s2),
                            "--heads", "crm1-b0-rdi0-fcn,crm2-b1-rdi1-dlb", *common)
    assert code == 0, err
    card = json.loads((s2 / "card.json").read_text())
    assert card["mess"]["stage"] == 2 and len(card["metrics"]["val_exit_miou"]) == 2 * len(card["mess"]["exit_config"]["exit_points"]) + 1
    code, _, err = run_main(monkeypatch, capsys, "exits", "search", "--ckpt", str(s2), "--data", "synthetic", "--split", "val", "--out", str(searched))
    assert code == 2 and "never on evaluation frames" in err
    code, _, err = run_main(monkeypatch, capsys, "exits", "search", "--ckpt", str(s2), "--data", "synthetic", "--limit", "4",
                            "--max-miou-drop", "0.5", "--out", str(searched))
    assert code == 0, err
    out = tmp_path / "eval.json"
    code, _, err = run_main(monkeypatch, capsys, "exits", "eval", "--ckpt", str(searched), "--data", "synthetic", "--limit", "3", "--json", str(out))
    assert code == 0, err
    e = json.loads(out.read_text())
    assert sum(e["exit_histogram"].values()) == e["frames"] == 3 and e["gflops_per_frame"] <= e["final_gflops_per_frame"] + 1e-9
    assert {"miou", "final_exit_miou", "latency_ms", "final_latency_ms"} <= set(e)
    run = tmp_path / "collab.json"  # the searched network as the device of a collaborative run
    code, _, err = run_main(monkeypatch, capsys, "collab", "--data", "synthetic", "--split", "val", "--device-ckpt", str(DEVICE),
                            "--cloud-ckpt", str(REPO / "checkpoints/synthetic-cloud"), "--policy", "entropy", "--rate", "0.5",
                            "--mess-ckpt", str(searched), "--limit", "3", "--bootstrap", "50", "--json", str(run))
    assert code == 0, err
    r = json.loads(run.read_text())
    assert sum(r["exit_histogram"].values()) == 3 and r["mess"]["setting"] == e["configuration"]["setting"]
    code, _, err = run_main(monkeypatch, capsys, "collab", "--data", "synthetic", "--device-ckpt", str(DEVICE), "--cloud-ckpt",
                            str(REPO / "checkpoints/synthetic-cloud"), "--sweep", "0.1", "--mess-ckpt", str(searched), "--limit", "3")
    assert code == 2 and "single runs" in err


@pytest.mark.skipif(not (DEVICE / "card.json").is_file(), reason="committed synthetic checkpoints not present")
def test_frozen_cloud_exits_policies_and_bench(tmp_path: Path, monkeypatch, capsys) -> None:
    """Stage 2 straight on a plain (cloud) checkpoint, Table 5's control rows, Fig. 4's policies, per-exit bench."""
    cloud, s2 = REPO / "checkpoints/synthetic-cloud", tmp_path / "cloud-s2"
    common = ["--data", "synthetic", "--epochs", "1", "--val-limit", "2", "--train-limit", "4"]
    code, _, err = run_main(monkeypatch, capsys, "exits", "train", "--stage", "2", "--base-ckpt", str(cloud), "--out", str(s2),
                            "--heads", "crm1-b0-rdi0-fcn", "--exits", "2", *common)
    assert code == 0, err
    assert json.loads((s2 / "card.json").read_text())["kind"] == "cloud"  # the MESS card keeps the base's kind
    code, _, err = run_main(monkeypatch, capsys, "collab", "--data", "synthetic", "--device-ckpt", str(DEVICE), "--cloud-ckpt", str(cloud),
                            "--policy", "entropy", "--mess-ckpt", str(s2), "--limit", "2")
    assert code == 2 and "device one" in err, err  # a multi-exit cloud model is not a device
    code, _, err = run_main(monkeypatch, capsys, "exits", "train", "--stage", "1", "--exit-loss", "final", "--base-ckpt", str(DEVICE),
                            "--out", str(tmp_path / "single"), "--exits", "2", *common)
    assert code == 0, err
    code, _, err = run_main(monkeypatch, capsys, "exits", "train", "--stage", "1", "--exit-loss", "some", "--base-ckpt", str(DEVICE),
                            "--out", str(tmp_path / "bad"), *common)
    assert code == 2 and "dropout, all, final" in err
    curves = tmp_path / "policies.json"
    code, _, err = run_main(monkeypatch, capsys, "exits", "policies", "--ckpt", str(s2), "--data", "synthetic", "--limit", "3",
                            "--shift", "clean", "--shift", "fog:3", "--json", str(curves), "--plot", str(tmp_path / "p.png"))
    assert code == 0, err
    runs = json.loads(curves.read_text())["runs"]
    assert set(runs) == {"clean", "fog:3"} and (tmp_path / "p.png").is_file()
    clean = runs["clean"]
    assert set(clean["curves"]) == {"confidence_eq9", "confidence", "mean_confidence", "oracle"}
    strict = clean["curves"]["confidence"][-1]  # threshold 1.0: (almost) never early
    assert strict["gflops"] >= clean["final"]["gflops"]  # running to the end costs the final exit plus every check on the way
    bench = tmp_path / "bench.json"
    code, _, err = run_main(monkeypatch, capsys, "bench", "exits", "--ckpt", str(s2), "--runs", "1", "--height", "64", "--width", "96",
                            "--json", str(bench))
    assert code == 0, err
    rows = json.loads(bench.read_text())["exits"]
    assert list(rows)[-1] == FINAL and all(r["max_abs_diff"] < 1e-3 and r["onnx_ms"] > 0 and r["torch_ms"] > 0 for r in rows.values())
    assert rows[FINAL]["gflops"] > min(r["gflops"] for r in rows.values())


@pytest.mark.skipif(not (REPO / "checkpoints/synthetic-device-mess/card.json").is_file(), reason="committed MESS checkpoint absent")
def test_the_committed_synthetic_mess_device_runs_in_the_runtime() -> None:
    from tandemseg.data.synthetic import SyntheticScenes
    from tandemseg.device.steps import load_exit_model

    step = load_exit_model(REPO / "checkpoints/synthetic-device-mess")
    scenes = SyntheticScenes("val", frames=6)
    rt = DeviceRuntime(step, make_policy("entropy"), make_controller(BudgetSpec(rate=0.0)), None)
    results = [rt.finish(rt.process(scenes[i].image, i)) for i in range(6)]
    assert all(r.label.shape == scenes[0].label.shape and r.device_gflops is not None for r in results)
    assert {r.exit for r in results} <= {*step.config.exits, FINAL}
