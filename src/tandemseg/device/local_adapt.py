"""Device-only adaptation baselines of CEMA's comparison, as model steps of the runtime: the device adapts on its
own frames, nothing is uploaded.

    bn    BatchNorm statistics adaptation: each frame normalised with its own statistics, the running
          statistics follow the stream (momentum `momentum`); no gradients (Schneider et al., 2020)
    tent  Tent (Wang et al., ICLR 2021) on the device: the frame's mean pixel entropy minimised over the
          normalisation affine parameters, one step per frame; the frame's map is the forward before the step
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from tandemseg.data.tensors import to_tensor
from tandemseg.device.steps import DeviceOutput, check_frame
from tandemseg.errors import SpecError
from tandemseg.models.adaptation import adapted_parameters, frame_entropy, only_train, set_adaptation_mode
from tandemseg.models.blocks import resize

LOCAL_METHODS = ("bn", "tent")


class LocalAdaptModel:
    def __init__(self, model: nn.Module, method: str, lr: float = 1e-4, momentum: float = 0.1) -> None:
        if method not in LOCAL_METHODS:
            raise SpecError(f"unknown device-side adaptation {method!r}; valid: {', '.join(LOCAL_METHODS)}")
        self.model, self.method = model, method
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = momentum
        params = only_train(model, adapted_parameters(model, "norm"))
        self.opt = torch.optim.SGD(params, lr=lr, momentum=0.9) if method == "tent" else None

    def run(self, frame: np.ndarray | None, frame_id: int) -> DeviceOutput:
        check_frame(frame)
        t0 = time.perf_counter()
        x = to_tensor([frame])  # (1, 3, H, W)
        set_adaptation_mode(self.model)
        if self.method == "tent":
            logits = self.model.forward_coarse(x)  # (1, C, h, w)
            loss = frame_entropy(logits).mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            logits = logits.detach()
        else:
            with torch.no_grad():
                logits = self.model.forward_coarse(x)  # (1, C, h, w)
        self.model.eval()
        pred = resize(logits, x.shape[-2:]).argmax(1)[0].to(torch.uint8).numpy()  # (H, W)
        probs = logits[0].float().softmax(0)  # (C, h, w)
        return DeviceOutput(probs, pred, (time.perf_counter() - t0) * 1e3, (frame.shape[0], frame.shape[1]))
