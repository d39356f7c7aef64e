"""Checkpoints: save -> load reproduces the model; every broken checkpoint fails with a message that says what to do.

Weights are stored as float16 (see models/checkpoint.py). So the round trip is tested twice:
bit-exact for a model whose float tensors were first rounded to float16 (storage loses nothing
then), and with a tolerance for an ordinary float32 model (storage rounds every weight).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from _tiny import CLOUD_TINY, DEVICE_TINY

from tandemseg.data.classes import CAMVID, CITYSCAPES
from tandemseg.errors import CheckpointError
from tandemseg.models.checkpoint import CARD, WEIGHTS, load_checkpoint, read_card, save_checkpoint
from tandemseg.models.registry import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def trained_like(kind: str, config: dict, seed: int = 0) -> torch.nn.Module:
    """A tiny model with non-trivial BatchNorm statistics (a few train-mode passes), in eval mode."""
    torch.manual_seed(seed)
    model = build_model(kind, config).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(2, 3, 64, 96))
    return model.eval()


def save(folder: Path, model: torch.nn.Module, kind: str) -> Path:
    return save_checkpoint(folder, model, kind, CAMVID, data="synthetic", recipe="tandemseg train --model x --out y")


def round_to_fp16(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.copy_(v.half().float())


@pytest.fixture
def device_ckpt(tmp_path: Path) -> Path:
    return save(tmp_path / "device", trained_like("device", DEVICE_TINY), "device")


@pytest.mark.parametrize("kind, config", [("device", DEVICE_TINY), ("cloud", CLOUD_TINY)])
def test_round_trip_is_exact_for_fp16_representable_weights(tmp_path: Path, kind: str, config: dict) -> None:
    model = trained_like(kind, config)
    round_to_fp16(model)
    ck = load_checkpoint(save(tmp_path / kind, model, kind), expect_kind=kind, expect_classes=CAMVID)
    assert not ck.model.training and ck.kind == kind and ck.classes == CAMVID
    frame = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(ck.model(frame), model(frame))  # float16 storage loses nothing for these weights


def test_round_trip_of_float32_weights_is_close(tmp_path: Path) -> None:
    """Storage rounds each weight to 11 significant bits (relative error <= 2^-11 ~ 4.9e-4); through a
    dozen layers that stays well under 1% of the logit range, and predictions agree almost everywhere
    (pixels whose top two logits are within that error may flip, hence not 100%)."""
    model = trained_like("device", DEVICE_TINY)
    ck = load_checkpoint(save(tmp_path / "d", model, "device"))
    frame = torch.rand(4, 3, 64, 96)
    with torch.no_grad():
        ref, got = model(frame), ck.model(frame)
    assert (got - ref).abs().max() <= 1e-2 * ref.abs().max()
    assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.99


def test_card_records_what_rebuilds_the_model(device_ckpt: Path) -> None:
    card = read_card(device_ckpt)
    assert card["kind"] == "device" and card["weights_dtype"] == "float16"
    assert card["classes"]["names"] == list(CAMVID.names)
    assert card["parameters"] == sum(p.numel() for p in build_model("device", DEVICE_TINY).parameters())
    assert card["recipe"].startswith("tandemseg train")
    assert build_model("device", card["config"]).cfg == build_model("device", DEVICE_TINY).cfg


def test_wrong_kind(device_ckpt: Path) -> None:
    with pytest.raises(CheckpointError, match="holds a device model but a cloud model is needed here"):
        load_checkpoint(device_ckpt, expect_kind="cloud")


def test_wrong_classes(device_ckpt: Path) -> None:
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(device_ckpt, expect_classes=CITYSCAPES)
    assert "predicts 11 classes" in str(e.value) and "19 classes" in str(e.value)
    assert "use a checkpoint trained on this label set" in str(e.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_weights(device_ckpt: Path, damage: str) -> None:
    weights = device_ckpt / WEIGHTS
    blob = weights.read_bytes()
    weights.write_bytes({"garbage": b"not a safetensors file" * 10, "truncated": blob[: len(blob) // 2], "empty": b""}[damage])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(device_ckpt)
    assert "is corrupt or truncated" in str(e.value)
    assert "re-run the recipe: tandemseg train" in str(e.value)  # says how to get it back


def test_missing_card(device_ckpt: Path) -> None:
    (device_ckpt / CARD).unlink()
    with pytest.raises(CheckpointError, match=f"has no {CARD}; it is not a tandemseg checkpoint"):
        load_checkpoint(device_ckpt)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint folder not found: .*Pass a folder holding weights.safetensors and card.json"):
        load_checkpoint(tmp_path / "nope")


def test_missing_weights(device_ckpt: Path) -> None:
    (device_ckpt / WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match=f"has a card but no {WEIGHTS}"):
        load_checkpoint(device_ckpt)


def test_card_not_json(device_ckpt: Path) -> None:
    (device_ckpt / CARD).write_text("{ half a card")
    with pytest.raises(CheckpointError, match="is not valid JSON .*restore it from version control or re-run the recipe"):
        load_checkpoint(device_ckpt)


def test_card_names_unknown_kind(device_ckpt: Path) -> None:
    card = json.loads((device_ckpt / CARD).read_text())
    (device_ckpt / CARD).write_text(json.dumps({**card, "kind": "transformer"}))
    with pytest.raises(CheckpointError, match="names model kind 'transformer'; valid: device, cloud"):
        load_checkpoint(device_ckpt)


def forget_digest(folder: Path) -> None:
    card = json.loads((folder / CARD).read_text())
    del card["weights_sha256"]
    (folder / CARD).write_text(json.dumps(card))


def test_weights_from_another_kind(tmp_path: Path, device_ckpt: Path) -> None:
    """A device card beside cloud weights: the tensor names differ."""
    cloud = save(tmp_path / "cloud", trained_like("cloud", CLOUD_TINY), "cloud")
    shutil.copy(cloud / WEIGHTS, device_ckpt / WEIGHTS)
    with pytest.raises(CheckpointError, match="does not match the sha256 its card records"):
        load_checkpoint(device_ckpt)  # the card's digest catches the swap first
    forget_digest(device_ckpt)  # a card from before digests: the names and shapes still catch it
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(device_ckpt)
    msg = str(e.value)
    assert "weights do not fit the architecture in the card" in msg and "missing [" in msg and "unexpected [" in msg
    assert "the card and weights come from different models" in msg


def test_weights_from_a_wider_model_of_the_same_kind(tmp_path: Path, device_ckpt: Path) -> None:
    """Same tensor names, different shapes: the message names the tensor and both shapes."""
    wider = save(tmp_path / "wide", trained_like("device", {**DEVICE_TINY, "head_channels": 24}), "device")
    shutil.copy(wider / WEIGHTS, device_ckpt / WEIGHTS)
    forget_digest(device_ckpt)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(device_ckpt)
    msg = str(e.value)
    assert "has shape (24," in msg and "but the card's architecture needs (16," in msg
    assert "different models" in msg  # and why: the two files were not saved together


def test_card_config_that_cannot_build(device_ckpt: Path) -> None:
    card = json.loads((device_ckpt / CARD).read_text())
    card["config"]["stem_width"] = 8
    (device_ckpt / CARD).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=r"cannot build the model from its config .*stem_width"):
        load_checkpoint(device_ckpt)
