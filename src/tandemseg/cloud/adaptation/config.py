"""The adaptation settings, saved with every result that used them (nanoGPT-style: one commented dataclass)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from tandemseg.errors import SpecError

PARAM_SETS = ("norm", "all")
EVICTIONS = ("fifo", "reservoir")
SCOPES = ("device", "fleet")
NORM_MODES = ("running", "frame", "batch")


@dataclass
class AdaptConfig:
    # which tensors adapt: 'norm' = normalisation layers' affine parameters (Tent; the student also moves their
    # running statistics, which are part of the update), 'all' = every parameter (large updates, not advised)
    params: str = "norm"
    # BatchNorm while adapting. 'running': the statistics the model was trained with (only affine parameters move).
    # 'frame': each frame normalised with its own statistics, as a device running BN adaptation does; the student
    # then learns under the very normalisation it is deployed with, and the device runs that way (the default:
    # per-frame statistics alone are the strongest device-only baseline on CamVid train streams, docs/results/adaptation.md).
    # 'batch': the batch's statistics (Tent); the student's running statistics then follow the stream and are pushed too.
    foundation_norm: str = "running"
    student_norm: str = "frame"
    foundation_lr: float = 1e-4  # SGD on the foundation (cloud) model's adapted parameters, entropy minimisation
    student_lr: float = 1e-3  # Adam on the student (device copy), distillation
    batch: int = 4  # uploads per adaptation step: the cloud adapts once this many new frames of a device arrived
    replay: int = 4  # frames drawn from the replay buffer for each distillation step, next to the new ones
    student_steps: int = 1  # distillation steps per adaptation step
    alpha: float = 1.0  # weight of KL(teacher || student) in the distillation objective
    beta: float = 1.0  # weight of CE(student, teacher's pseudo-label)
    e_margin: float = 0.4  # E_0 of the reliability weight exp(-(E - E_0)), as a fraction of ln C (CEMA/ETA)
    adapt_scale: float = 0.5  # the foundation sees frames resized by this factor (the device's own input scale): a CPU saving
    reset_entropy: float = 0.7  # anchor: reset the foundation to its start when a batch's mean entropy passes this fraction of ln C
    buffer_frames: int = 64  # replay buffer capacity, frames
    buffer_bytes: int = 64 * 1024 * 1024  # and bytes (frames are kept as uint8 RGB)
    eviction: str = "fifo"  # fifo | reservoir
    scope: str = "device"  # one adapter per device, or one for the fleet
    max_devices: int = 16  # adapters held at once; uploads of further devices are not adapted on (counted)
    queue_frames: int = 256  # bounded queue between the segment path and the adaptation worker
    seed: int = 0

    def __post_init__(self) -> None:
        for name, valid in (("params", PARAM_SETS), ("eviction", EVICTIONS), ("scope", SCOPES), ("foundation_norm", NORM_MODES),
                            ("student_norm", NORM_MODES)):
            if getattr(self, name) not in valid:
                raise SpecError(f"adaptation {name} {getattr(self, name)!r} is not one of {', '.join(valid)}")
        if self.batch < 1 or self.replay < 0 or self.student_steps < 1 or self.buffer_frames < 1 or self.max_devices < 1:
            raise SpecError("adaptation batch, student_steps, buffer_frames and max_devices must be >= 1, replay >= 0")
        if not 0 < self.adapt_scale <= 1:
            raise SpecError(f"adapt_scale must be in (0, 1], got {self.adapt_scale}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_options(cls, options: dict) -> AdaptConfig:
        """From `--adapt-option key=value` pairs; unknown keys are refused, listing the valid ones."""
        valid = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise SpecError(f"unknown adaptation option(s) {unknown}; valid: {', '.join(valid)}")
        defaults = cls()
        typed = {}
        for key, text in options.items():
            kind = type(getattr(defaults, key))
            try:
                typed[key] = kind(text)
            except ValueError:
                raise SpecError(f"adaptation option {key}={text!r} is not a {kind.__name__}") from None
        return cls(**typed)
