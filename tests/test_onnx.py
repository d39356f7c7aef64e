"""ONNX export: the graph computes the model's forward (antialiased downsample included) within float rounding."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn.functional as F
from _tiny import TINY

from tandemseg.cli import main
from tandemseg.data.classes import CAMVID
from tandemseg.errors import TandemsegError
from tandemseg.models.checkpoint import save_checkpoint
from tandemseg.models.onnx_export import AntialiasResize, export_onnx, onnx_latency, onnx_parity
from tandemseg.models.registry import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def trained_like(kind: str) -> torch.nn.Module:
    """Tiny model with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    model = build_model(kind, TINY[kind]).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(2, 3, 64, 96))
    return model.eval()


@pytest.mark.parametrize("in_hw, out_hw", [((64, 96), (32, 48)), ((70, 90), (35, 45)), ((37, 53), (18, 27)), ((50, 70), (17, 23))])
def test_antialias_resize_matches_torch(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
    x = torch.rand(2, 3, *in_hw)
    ref = F.interpolate(x, size=out_hw, mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(AntialiasResize(in_hw, out_hw)(x), ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("kind, hw", [("device", (64, 96)), ("device", (70, 90)), ("cloud", (64, 96))])
def test_onnx_parity(tmp_path: Path, kind: str, hw: tuple[int, int]) -> None:
    model = trained_like(kind)
    path = export_onnx(model, tmp_path / f"{kind}.onnx", input_hw=hw)
    frames = torch.rand(3, 3, *hw)  # batch 3: the graph was traced with batch 2, so this checks the dynamic axis
    parity = onnx_parity(model, path, frames)
    assert parity["max_abs_diff"] < 1e-3, parity
    assert parity["argmax_agreement"] > 0.99, parity
    assert parity["frames"] == 3
    assert not model.training  # export and parity leave the model's mode alone


def test_graph_signature(tmp_path: Path) -> None:
    path = export_onnx(trained_like("device"), tmp_path / "d.onnx", input_hw=(64, 96), opset=17)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert graph.opset_import[0].version == 17

    def dims(value) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert [i.name for i in graph.graph.input] == ["frame"] and dims(graph.graph.input[0]) == ["batch", 3, 64, 96]
    assert [o.name for o in graph.graph.output] == ["logits"] and dims(graph.graph.output[0]) == ["batch", CAMVID.num_classes, 64, 96]


def test_static_batch_export(tmp_path: Path) -> None:
    path = export_onnx(trained_like("device"), tmp_path / "d.onnx", input_hw=(64, 96), dynamic_batch=False)
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1


def test_training_mode_is_restored(tmp_path: Path) -> None:
    model = trained_like("device").train()
    export_onnx(model, tmp_path / "d.onnx", input_hw=(64, 96))
    assert model.training


def test_onnx_latency_is_positive(tmp_path: Path) -> None:
    path = export_onnx(trained_like("device"), tmp_path / "d.onnx", input_hw=(64, 96))
    assert onnx_latency(path, (64, 96), threads=1, warmup=1, runs=3) > 0


def test_missing_onnx_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(TandemsegError, match="ONNX file not found: .*tandemseg export-onnx --ckpt DIR"):
        onnx_latency(tmp_path / "none.onnx", (64, 96))


def test_export_rejects_non_segmenters(tmp_path: Path) -> None:
    with pytest.raises(TandemsegError, match="only tandemseg segmenters"):
        export_onnx(torch.nn.Conv2d(3, 3, 1), tmp_path / "c.onnx")


def test_export_onnx_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    ckpt = save_checkpoint(tmp_path / "ck", trained_like("device"), "device", CAMVID, data="synthetic", recipe="pytest")
    out = tmp_path / "m.onnx"
    monkeypatch.setattr(sys, "argv", ["tandemseg", "export-onnx", "--ckpt", str(ckpt), "--out", str(out),
                                      "--height", "64", "--width", "96", "--frames", "2", "--threads", "1"])
    main()
    text = capsys.readouterr().out
    assert out.is_file()
    assert "parity on 2 synthetic frames" in text and "argmax agreement" in text and "ONNX Runtime latency" in text
