"""Export a segmenter to ONNX and check the exported graph against PyTorch.

The exported graph takes the raw [0,1] frame (N,3,H,W) and returns full-resolution logits (N,C,H,W),
exactly like the model's `forward`: ImageNet normalisation, the device's downsample D_s (ACDC eq. 4)
and the final upsample are all inside the graph.

Two things stop a plain `torch.onnx.export(model, ...)` from working, so an export wrapper is used:

* The device downsamples with `interpolate(..., antialias=True)`, whose ATen op
  (`_upsample_bilinear2d_aa`) the TorchScript-based exporter cannot translate at opset 17 or 18.
  Replacing it with plain bilinear would change what the device sees (thin poles alias), so the
  wrapper instead precomputes torch's own antialiasing weights for the export size and applies them
  as a separable gather + weighted sum (ONNX Gather/Mul/ReduceSum). This is the same linear map, so
  parity is float rounding (max |logit diff| ~1e-5 on the trained checkpoints), not an approximation.
* The downsample size is computed with Python `round()` on the frame's shape, which the tracer
  records as a tensor. The wrapper fixes the spatial size at export time (`input_hw`).

Hence the graph is specialised to one frame size (a camera's resolution is fixed); only the batch
dimension is dynamic. The exporter is torch's TorchScript-based one (`dynamo=False`): the dynamo
exporter needs the `onnxscript` package, which is not a dependency of this project.
"""

from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tandemseg.errors import TandemsegError
from tandemseg.models.blocks import resize


def _axis_taps(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (n_out, T) and weights (n_out, T) of torch's antialiased bilinear resize along one axis.

    The weights are read off torch itself (resizing an identity matrix), so they match
    `interpolate(antialias=True)` exactly, including its renormalisation at the borders.
    """
    eye = torch.eye(n_in, dtype=torch.float64)[None, None]  # rows: unit impulses along the axis
    # Resize only the last axis (height stays n_in, so that axis is untouched): column o of `mat`
    # holds the weight every input sample contributes to output sample o.
    mat = F.interpolate(eye, size=(n_in, n_out), mode="bilinear", align_corners=False, antialias=True)[0, 0]
    taps = int((mat != 0).sum(0).max())
    idx = torch.zeros(n_out, taps, dtype=torch.long)
    wgt = torch.zeros(n_out, taps, dtype=torch.float32)
    for o in range(n_out):
        nz = torch.nonzero(mat[:, o]).flatten()
        idx[o, : len(nz)] = nz
        wgt[o, : len(nz)] = mat[nz, o].float()  # padded taps point at sample 0 with weight 0
    return idx, wgt


class AntialiasResize(nn.Module):
    """Fixed-size antialiased bilinear downsample as separable gathers: ONNX-exportable at opset >= 11."""

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
        super().__init__()
        self.in_hw, self.out_hw = tuple(in_hw), tuple(out_hw)
        h_idx, h_w = _axis_taps(in_hw[0], out_hw[0])
        w_idx, w_w = _axis_taps(in_hw[1], out_hw[1])
        self.register_buffer("h_idx", h_idx.flatten(), persistent=False)
        self.register_buffer("h_w", h_w[:, :, None], persistent=False)  # (h, T, 1): broadcasts over width
        self.register_buffer("w_idx", w_idx.flatten(), persistent=False)
        self.register_buffer("w_w", w_w, persistent=False)  # (w, T)
        self.h_taps, self.w_taps = h_idx.shape[1], w_idx.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.out_hw
        # Height: (N,C,H,W) -> gather (N,C,h*T,W) -> (N,C,h,T,W) -> weighted sum over taps.
        y = x.index_select(2, self.h_idx).unflatten(2, (h, self.h_taps))
        y = (y * self.h_w).sum(3)  # (N, C, h, W)
        # Width: (N,C,h,W) -> gather (N,C,h,w*T) -> (N,C,h,w,T) -> weighted sum over taps.
        y = y.index_select(3, self.w_idx).unflatten(3, (w, self.w_taps))
        return (y * self.w_w).sum(4)  # (N, C, h, w)


def device_input_hw(input_hw: tuple[int, int], input_scale: float) -> tuple[int, int]:
    """The size the device computes at for a full-res frame: the rounding DeviceSegmenter.downsample uses."""
    h, w = input_hw
    return max(1, round(h * input_scale)), max(1, round(w * input_scale))


class ExportWrapper(nn.Module):
    """frame (N,3,H,W) in [0,1] -> logits (N,C,H,W): the model's forward at one fixed H, W, exportable.

    Works for any segmenter with `normalize`, `forward_features`, `decode` and `cfg.input_scale`
    (both kinds here). With input_scale 1 there is no downsample, as in the model.
    """

    def __init__(self, model: nn.Module, input_hw: tuple[int, int]) -> None:
        super().__init__()
        for attr in ("normalize", "forward_features", "decode", "cfg"):
            if not hasattr(model, attr):
                raise TandemsegError(f"{type(model).__name__} lacks {attr!r}; only tandemseg segmenters (device, cloud) can be exported")
        self.model = model
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        scale = float(getattr(model.cfg, "input_scale", 1.0))
        small = device_input_hw(self.input_hw, scale)
        self.down = nn.Identity() if scale == 1.0 or small == self.input_hw else AntialiasResize(self.input_hw, small)

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        m = self.model
        coarse = m.decode(m.forward_features(m.normalize(self.down(frame))))
        return resize(coarse, self.input_hw)


def export_onnx(
    model: nn.Module, path: str | Path, input_hw: tuple[int, int] = (360, 480), opset: int = 17, dynamic_batch: bool = True,
) -> Path:
    """Write `model` as an ONNX graph taking 'frame' (N,3,H,W) in [0,1] and returning 'logits' (N,C,H,W).

    H, W are fixed to `input_hw` (see the module docstring for why); N is dynamic when `dynamic_batch`.
    The model is exported in eval mode and left in the mode it was in.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    wrapper = ExportWrapper(model, input_hw).eval()
    example = torch.rand(2 if dynamic_batch else 1, 3, *wrapper.input_hw)
    axes = {"frame": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter warns that it is deprecated in favour of dynamo=True, which
            # needs onnxscript; it is still the supported path for torch 2.13 without it.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                wrapper, (example,), str(path), dynamo=False, opset_version=opset,
                input_names=["frame"], output_names=["logits"], dynamic_axes=axes, do_constant_folding=True,
            )
    except Exception as e:
        raise TandemsegError(f"ONNX export of {type(model).__name__} at {input_hw} (opset {opset}) failed: {e}") from e
    finally:
        model.train(was_training)
    return path


def _session(path: str | Path, threads: int = 2):
    import onnxruntime as ort

    if not Path(path).is_file():
        raise TandemsegError(f"ONNX file not found: {path}; create it with `tandemseg export-onnx --ckpt DIR --out {path}`")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1  # the graph is a chain; a second pool would only compete for the cores
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


@torch.inference_mode()
def onnx_parity(model: nn.Module, path: str | Path, frames: torch.Tensor, threads: int = 2) -> dict:
    """Compare the ONNX graph at `path` with `model` on `frames` (N,3,H,W) in [0,1].

    Returns max_abs_diff of logits, argmax_agreement (fraction of pixels with the same class) and
    the number of frames.
    """
    was_training = model.training
    model.eval()
    try:
        ref = model(frames).numpy()
    finally:
        model.train(was_training)
    sess = _session(path, threads)
    got = sess.run(["logits"], {"frame": frames.numpy().astype(np.float32)})[0]
    if got.shape != ref.shape:
        raise TandemsegError(f"ONNX output shape {got.shape} differs from PyTorch {ref.shape}; was it exported at another input size?")
    return {
        "max_abs_diff": float(np.abs(got - ref).max()),
        "argmax_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
        "frames": int(frames.shape[0]),
    }


def onnx_latency(path: str | Path, input_hw: tuple[int, int] = (360, 480), threads: int = 2, warmup: int = 3, runs: int = 20) -> float:
    """Median ms for one (1,3,H,W) frame through ONNX Runtime's CPU provider with `threads` intra-op threads."""
    sess = _session(path, threads)
    x = np.random.default_rng(0).random((1, 3, *input_hw), dtype=np.float32)
    for _ in range(warmup):
        sess.run(None, {"frame": x})  # every output: 'logits', or each exit's of an exit graph
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {"frame": x})
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)
