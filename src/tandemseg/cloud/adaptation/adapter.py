"""One device's (or the fleet's) adaptation state in the cloud: the adapted foundation, the student, the replay
buffer and the version of the weights published for download."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from tandemseg.cloud.adaptation.config import AdaptConfig
from tandemseg.cloud.adaptation.replay import ReplayBuffer
from tandemseg.data.tensors import to_tensor
from tandemseg.models.adaptation import (
    adapted_parameters,
    adapted_state_names,
    distillation_loss,
    forward_per_frame,
    foundation_loss,
    frame_entropy,
    freeze_running_statistics,
    only_train,
    set_adaptation_mode,
)
from tandemseg.models.blocks import resize
from tandemseg.wire.weights import state_hash


class Adapter:
    """`step(frames)`: one CEMA adaptation step on a batch of newly uploaded frames (uint8 (H, W, 3) each):

    1. foundation: entropy minimisation (weighted, `foundation_loss`) on the new frames, one SGD step; if the
       batch's mean entropy passes `reset_entropy * ln C`, the foundation is reset to its start first (the anchor
       against silent collapse; `resets` counts it);
    2. student: `student_steps` steps of `distillation_loss` on the new frames plus `replay` frames from the buffer;
    3. the new frames join the buffer; the student's adapted tensors are published as version + 1.
    """

    def __init__(self, foundation: nn.Module, device_model: nn.Module, num_classes: int, config: AdaptConfig) -> None:
        self.config, self.num_classes = config, num_classes
        self.foundation = copy.deepcopy(foundation).float()
        self._foundation_start = copy.deepcopy(self.foundation.state_dict())
        self.student = copy.deepcopy(device_model).float().eval()
        if config.student_norm == "frame":  # its running statistics are never used: keep them the shipped ones
            freeze_running_statistics(self.student)
        self.base_hash = state_hash(self.student.state_dict())
        # only with 'batch' do the student's running statistics matter to the device: otherwise the update carries parameters only
        self.names = (adapted_state_names(self.student, config.params) if config.student_norm == "batch"
                      else sorted(adapted_parameters(self.student, config.params)))
        f_params = only_train(self.foundation, adapted_parameters(self.foundation, config.params))
        s_params = only_train(self.student, adapted_parameters(self.student, config.params))
        self.f_opt = torch.optim.SGD(f_params, lr=config.foundation_lr, momentum=0.9)
        self.s_opt = torch.optim.Adam(s_params, lr=config.student_lr)
        self.buffer = ReplayBuffer(config.buffer_frames, config.buffer_bytes, config.eviction, config.seed)
        self.snapshot: tuple[int, dict[str, torch.Tensor]] = (0, {})  # (version, adapted tensors), replaced as one
        self.resets = 0

    def step(self, frames: list[np.ndarray]) -> dict:
        new = to_tensor(frames)  # (B, 3, H, W) in [0, 1]
        f_entropy = self._adapt_foundation(new)
        replayed = self.buffer.sample(self.config.replay)
        batch = to_tensor(frames + replayed) if replayed else new  # (B + R, 3, H, W)
        s_loss = [self._distil(batch) for _ in range(self.config.student_steps)]
        for f in frames:
            self.buffer.add(f)
        self._publish()
        record = {"version": self.version, "frames": len(frames), "replayed": len(replayed), "foundation_entropy": f_entropy,
                  "student_loss": float(np.mean(s_loss)), "resets": self.resets, "buffer_frames": len(self.buffer),
                  "buffer_bytes": self.buffer.nbytes}
        return record

    def _foundation_input(self, x: torch.Tensor) -> torch.Tensor:
        s = self.config.adapt_scale
        return x if s == 1 else resize(x, (max(1, round(x.shape[-2] * s)), max(1, round(x.shape[-1] * s))))

    def _adapt_foundation(self, x: torch.Tensor) -> float:
        set_adaptation_mode(self.foundation, self.config.foundation_norm)
        logits = self.foundation(self._foundation_input(x))  # (B, C, h, w)
        mean_entropy = float(frame_entropy(logits.detach()).mean())
        if mean_entropy > self.config.reset_entropy * math.log(self.num_classes):
            self.foundation.load_state_dict(self._foundation_start)
            self.f_opt.state.clear()
            self.resets += 1
            logits = self.foundation(self._foundation_input(x))
        loss = foundation_loss(logits, self.config.e_margin)
        self.f_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.f_opt.step()
        return mean_entropy

    def _distil(self, x: torch.Tensor) -> float:
        with torch.no_grad():
            teacher = self.foundation(self._foundation_input(x))  # (N, C, h, w)
        student = forward_per_frame(self.student, x, self.config.student_norm)  # (N, C, h', w')
        loss = distillation_loss(student, teacher, self.config.alpha, self.config.beta, self.config.e_margin)
        self.s_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.s_opt.step()
        self.student.eval()
        return float(loss.detach())

    @property
    def version(self) -> int:
        return self.snapshot[0]

    def _publish(self) -> None:
        state = self.student.state_dict()
        self.snapshot = (self.version + 1, {k: state[k].detach().clone() for k in self.names})
