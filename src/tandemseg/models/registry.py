"""The model kinds a checkpoint card may name: a plain dict, greppable, no registration magic."""

from __future__ import annotations

from torch import nn

from tandemseg.errors import SpecError
from tandemseg.models.cloud import CloudConfig, CloudSegmenter
from tandemseg.models.device import DeviceConfig, DeviceSegmenter

MODEL_KINDS: dict[str, tuple[type[nn.Module], type]] = {
    "device": (DeviceSegmenter, DeviceConfig),
    "cloud": (CloudSegmenter, CloudConfig),
}


def build_model(kind: str, config: dict | None = None, **overrides) -> nn.Module:
    """Build a model of `kind` from a JSON config dict (as stored in a card) plus keyword overrides."""
    if kind not in MODEL_KINDS:
        raise SpecError(f"unknown model kind {kind!r}; valid: {', '.join(MODEL_KINDS)}")
    model_cls, cfg_cls = MODEL_KINDS[kind]
    merged = {**(config or {}), **overrides}
    unknown = set(merged) - set(cfg_cls.__dataclass_fields__)
    if unknown:
        raise SpecError(f"unknown {kind} config field(s) {sorted(unknown)}; valid: {sorted(cfg_cls.__dataclass_fields__)}")
    return model_cls(cfg_cls.from_json(merged))
