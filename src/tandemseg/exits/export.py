"""ONNX export of exit segments of a multi-exit segmenter, with parity against PyTorch.

A graph takes the raw [0,1] frame (N, 3, H, W) and returns the full-size logits of the exits it was built
for: one exit (a budgeted submodel: the encoder up to that exit's stage and its head; the stages past it
are not in the graph) or several (one graph with every exit's output). As in models/onnx_export.py the
device's antialiased downsample becomes fixed-size gathers, so H, W are fixed and only N is dynamic.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tandemseg.errors import TandemsegError
from tandemseg.exits.costs import eval_mode, median_ms
from tandemseg.exits.network import FINAL, MultiExitSegmenter
from tandemseg.models.blocks import resize
from tandemseg.models.onnx_export import AntialiasResize, device_input_hw, onnx_latency


def output_name(key: str) -> str:
    return "logits_" + key.replace("-", "_")


class ExitGraph(nn.Module):
    """frame (N, 3, H, W) -> tuple of full-size logits (N, C, H, W), one per exit in `keys`, at one H, W."""

    def __init__(self, net: MultiExitSegmenter, keys: Sequence[str], input_hw: tuple[int, int]) -> None:
        super().__init__()
        self.net, self.keys = net, list(keys)
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        scale = float(getattr(getattr(net.base, "cfg", None), "input_scale", 1.0))
        small = device_input_hw(self.input_hw, scale)
        self.down = nn.Identity() if small == self.input_hw else AntialiasResize(self.input_hw, small)

    def forward(self, frame: torch.Tensor) -> tuple[torch.Tensor, ...]:
        net = self.net
        x = net.base.normalize(self.down(frame))  # (N, 3, h, w): the encoder's input, as encoder_input computes it
        if FINAL in self.keys:
            feats = net.base.encoder.forward_intermediates(x)[1]
        else:
            deepest = max(net.stage_of(k) for k in self.keys)
            feats = net.base.encoder.forward_intermediates(x, list(range(deepest + 1)), stop_early=True)[1]
        return tuple(resize(net.exit_native(k, feats), self.input_hw) for k in self.keys)


def export_exits_onnx(
    net: MultiExitSegmenter, path: str | Path, keys: Sequence[str], input_hw: tuple[int, int], opset: int = 17,
    dynamic_batch: bool = True,
) -> Path:
    """Write the exits `keys` as one ONNX graph: input 'frame', outputs `output_name(key)` per exit."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = ExitGraph(net, net.check_path(sorted(keys, key=net.stage_of)), input_hw)
    names = [output_name(k) for k in graph.keys]
    example = torch.rand(2 if dynamic_batch else 1, 3, *graph.input_hw)
    axes = {n: {0: "batch"} for n in ["frame", *names]} if dynamic_batch else None
    with eval_mode(net), warnings.catch_warnings():
        # TorchScript exporter: deprecated in favour of dynamo=True, which needs onnxscript (not a dependency).
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        try:
            torch.onnx.export(graph, (example,), str(path), dynamo=False, opset_version=opset, input_names=["frame"],
                              output_names=names, dynamic_axes=axes, do_constant_folding=True)
        except Exception as e:
            raise TandemsegError(f"ONNX export of exits {list(keys)} at {input_hw} failed: {e}") from e
    return path


@torch.inference_mode()
def exits_onnx_parity(net: MultiExitSegmenter, path: str | Path, frames: torch.Tensor, keys: Sequence[str], threads: int = 1) -> dict:
    """Per exit: max |logit difference| and argmax agreement of the ONNX graph against `forward_exit`."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"frame": frames.numpy().astype(np.float32)}), strict=True))
    out = {}
    with eval_mode(net):
        for k in keys:
            ref = net.forward_exit(frames, k).numpy()
            onnx_logits = got[output_name(k)]
            out[k] = {"max_abs_diff": float(np.abs(onnx_logits - ref).max()),
                      "argmax_agreement": float((onnx_logits.argmax(1) == ref.argmax(1)).mean())}
    return out


@torch.inference_mode()
def exit_latencies(net: MultiExitSegmenter, keys: Sequence[str], input_hw: tuple[int, int], folder: str | Path, threads: int = 1,
                   warmup: int = 3, runs: int = 10) -> dict[str, dict]:
    """Per exit, the budgeted submodel (frame -> that exit's full-size logits, nothing past its stage): median CPU ms in
    PyTorch and in ONNX Runtime (one graph per exit, written to `folder`), and the ONNX graph's parity."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    out = {}
    try:
        frame = torch.rand(1, 3, *input_hw)
        for k in keys:
            path = export_exits_onnx(net, Path(folder) / f"{k}.onnx", [k], input_hw)
            graph = ExitGraph(net, [k], input_hw)
            with eval_mode(net):
                torch_ms = median_ms(lambda g=graph: g(frame), warmup, runs)
            out[k] = {"torch_ms": torch_ms, "onnx_ms": onnx_latency(path, input_hw, threads, warmup, runs),
                      **exits_onnx_parity(net, path, frame, [k], threads)[k]}
    finally:
        torch.set_num_threads(previous)
    return out
