"""Test-time normalisation and device-only adaptation, as model steps of the runtime.

    FrameNormModel  BatchNorm statistics adaptation: each frame normalised with its own statistics (Schneider et
                    al., 2020, at batch size one); no gradients. CEMA's device runs this way too (cloud/adaptation,
                    student_norm='frame'), so its pushed affine parameters meet the normalisation they were learnt under.
    TentModel       Tent (Wang et al., ICLR 2021) on the device: the frame's mean pixel entropy minimised over the
                    normalisation affine parameters, one SGD step per frame; the frame's map is the forward before the step.

Running statistics are frozen (momentum 0): they are never used for inference here, and the model stays the
shipped one apart from what adapts.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from tandemseg.data.tensors import to_tensor
from tandemseg.device.steps import DeviceOutput, check_frame
from tandemseg.errors import SpecError
from tandemseg.models.adaptation import (
    adapted_parameters,
    forward_per_frame,
    frame_entropy,
    freeze_running_statistics,
    only_train,
)
from tandemseg.models.blocks import resize

LOCAL_METHODS = ("bn", "tent")


class FrameNormModel:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        freeze_running_statistics(model)

    def run(self, frame: np.ndarray | None, frame_id: int) -> DeviceOutput:
        check_frame(frame)
        t0 = time.perf_counter()
        x = to_tensor([frame])  # (1, 3, H, W)
        with torch.no_grad():
            logits = forward_per_frame(self.model, x, "frame")  # (1, C, h, w)
        return _output(self.model, logits, x, frame, t0)


class TentModel:
    def __init__(self, model: nn.Module, lr: float = 1e-4) -> None:
        self.model = model
        freeze_running_statistics(model)
        self.opt = torch.optim.SGD(only_train(model, adapted_parameters(model, "norm")), lr=lr, momentum=0.9)

    def run(self, frame: np.ndarray | None, frame_id: int) -> DeviceOutput:
        check_frame(frame)
        t0 = time.perf_counter()
        x = to_tensor([frame])  # (1, 3, H, W)
        logits = forward_per_frame(self.model, x, "frame")  # (1, C, h, w)
        loss = frame_entropy(logits).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return _output(self.model, logits.detach(), x, frame, t0)


def local_step(model: nn.Module, method: str, lr: float = 1e-4) -> FrameNormModel | TentModel:
    if method == "bn":
        return FrameNormModel(model)
    if method == "tent":
        return TentModel(model, lr)
    raise SpecError(f"unknown device-side adaptation {method!r}; valid: {', '.join(LOCAL_METHODS)}")


def _output(model: nn.Module, logits: torch.Tensor, x: torch.Tensor, frame: np.ndarray, t0: float) -> DeviceOutput:
    model.eval()
    pred = resize(logits, x.shape[-2:]).argmax(1)[0].to(torch.uint8).numpy()  # (H, W)
    probs = logits[0].float().softmax(0)  # (C, h, w)
    return DeviceOutput(probs, pred, (time.perf_counter() - t0) * 1e3, (frame.shape[0], frame.shape[1]))
