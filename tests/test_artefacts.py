"""Every file the system loads refuses damage with a message, never loads it silently: model, MESS and codec
checkpoints and U files, truncated, with one flipped bit, for another architecture or another label set.
(Bitstreams: test_codec_container.py; weight updates: test_adaptation.py; frames: test_service_http.py.)"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from _service_helpers import tiny_device

from tandemseg.codec.checkpoint import load_codec
from tandemseg.data.classes import CAMVID, CITYSCAPES
from tandemseg.device.uncertainty import UncertaintyMatrix
from tandemseg.errors import TandemsegError
from tandemseg.exits.checkpoint import load_mess, save_mess
from tandemseg.exits.heads import ExitSpec
from tandemseg.exits.network import MultiExitSegmenter
from tandemseg.models.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (REPO / "checkpoints/synthetic-device/card.json").is_file(), reason="committed checkpoints absent")


def flip_bit(path: Path, at: float = 0.75) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10  # deep in the tensor data, past the header
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def other_architecture(card: Path) -> None:
    c = json.loads(card.read_text())
    config = c["config"]
    key = next(k for k in ("head_channels", "aspp_channels", "latent_channels", "hidden_channels") if k in config)
    config[key] = int(config[key]) * 2
    card.write_text(json.dumps(c))


def mess_folder(tmp_path: Path) -> Path:
    net = MultiExitSegmenter(tiny_device(), [1, 2], ExitSpec())
    return save_mess(tmp_path / "mess", net, CAMVID, data="synthetic", recipe="tests", stage=1)


def copied(tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(REPO / "checkpoints" / name, tmp_path / name))


LOADERS: dict[str, tuple[Callable[[Path], Path], Callable[[Path], object], Callable[[Path], object] | None]] = {
    # artefact: (make a fresh copy, load it, load it for another label set)
    "device": (lambda t: copied(t, "synthetic-device"), load_checkpoint, lambda f: load_checkpoint(f, expect_classes=CITYSCAPES)),
    "cloud": (lambda t: copied(t, "synthetic-cloud"), load_checkpoint, lambda f: load_checkpoint(f, expect_classes=CITYSCAPES)),
    "mess": (mess_folder, load_mess, lambda f: load_mess(f, expect_classes=CITYSCAPES)),
    "codec": (lambda t: copied(t, "synthetic-codec"), load_codec, None),
}


@pytest.mark.parametrize("artefact", list(LOADERS))
@pytest.mark.parametrize("damage", ["truncated", "bit-flip", "architecture", "classes"])
def test_checkpoints_refuse_damage(artefact: str, damage: str, tmp_path: Path) -> None:
    make, load, load_other_classes = LOADERS[artefact]
    folder = make(tmp_path)
    load(folder)  # intact: loads
    if damage == "classes":
        if load_other_classes is None:
            pytest.skip("a codec has no label set of its own (its class count is checked against the cloud at `serve`)")
        with pytest.raises(TandemsegError, match="classes"):
            load_other_classes(folder)
        return
    {"truncated": lambda: truncate(folder / "weights.safetensors"), "bit-flip": lambda: flip_bit(folder / "weights.safetensors"),
     "architecture": lambda: other_architecture(folder / "card.json")}[damage]()
    with pytest.raises(TandemsegError) as e:
        load(folder)
    assert str(e.value) and str(folder) in str(e.value)


@pytest.mark.parametrize("damage", ["truncated", "bit-flip", "classes", "not-u"])
def test_u_files_refuse_damage(damage: str, tmp_path: Path) -> None:
    path = Path(shutil.copy(REPO / "checkpoints/synthetic-uncertainty.safetensors", tmp_path / "u.safetensors"))
    UncertaintyMatrix.load(path, expect_classes=CAMVID)
    if damage == "classes":
        with pytest.raises(TandemsegError, match="fit U for this device model"):
            UncertaintyMatrix.load(path, expect_classes=CITYSCAPES)
        return
    if damage == "truncated":
        truncate(path)
    elif damage == "bit-flip":
        flip_bit(path, at=0.9)  # U's float32 entries sit at the end of the file
    else:
        shutil.copy(REPO / "checkpoints/synthetic-device/weights.safetensors", path)
    with pytest.raises(TandemsegError) as e:
        UncertaintyMatrix.load(path, expect_classes=CAMVID)
    assert str(path) in str(e.value) and np.isfinite(len(str(e.value)))
