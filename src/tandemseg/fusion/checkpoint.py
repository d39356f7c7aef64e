"""Fusion checkpoint = folder with `weights.safetensors` + `card.json` (like every tandemseg checkpoint).

The card carries the `FusionConfig`, the class table, the fingerprint of the device checkpoint whose coarse
maps the CFE learned to refine (codec/checkpoint.py `device_fingerprint`), the frame size it was trained at,
the data, the recipe command and the metrics. Loading refuses another device model: a refiner learned on one
device's errors has no meaning on another's.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from tandemseg.codec.checkpoint import device_fingerprint
from tandemseg.data.classes import ClassTable
from tandemseg.digest import file_sha256
from tandemseg.errors import CheckpointError, SpecError
from tandemseg.fusion.config import FusionConfig
from tandemseg.fusion.engine import CollaborativeFusion
from tandemseg.jsonio import write_json
from tandemseg.models.checkpoint import check_state_matches, git_commit, read_json_card, read_weights

KIND = "fusion"
WEIGHTS = "weights.safetensors"
CARD = "card.json"


@dataclass
class FusionCheckpoint:
    fusion: CollaborativeFusion
    classes: ClassTable
    card: dict
    path: Path


def save_fusion(folder: str | Path, fusion: CollaborativeFusion, classes: ClassTable, device: nn.Module, *, data: str,
                recipe: str, frame_hw: tuple[int, int], metrics: dict | None = None, extra: dict | None = None) -> Path:
    """Weights first (float32: the module is small), the card last, so a card always describes whole weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in fusion.state_dict().items()}
    tmp = folder / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(folder / WEIGHTS)
    card = {
        "format_version": 1, "kind": KIND, "config": fusion.cfg.to_json(), "classes": classes.to_json(),
        "device_hash": device_fingerprint(device), "frame_hw": list(frame_hw),
        "parameters": sum(p.numel() for p in fusion.parameters()), "weights_dtype": "float32",
        "weights_sha256": file_sha256(folder / WEIGHTS), "data": data, "recipe": recipe, "metrics": metrics or {},
        "commit": git_commit(), "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), **(extra or {}),
    }
    write_json(folder / CARD, card)
    return folder


def read_fusion_card(folder: str | Path) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"fusion checkpoint folder not found: {folder} (e.g. checkpoints/camvid-fusion)")
    card = read_json_card(folder / CARD, CheckpointError, ("kind", "config", "classes", "device_hash"),
                          "pass a fusion checkpoint folder (written by `tandemseg fusion train`)")
    if card["kind"] != KIND:
        raise CheckpointError(f"{folder / CARD} is a {card['kind']!r} card, not a fusion checkpoint")
    return card


def load_fusion(folder: str | Path, device: nn.Module, expect_classes: ClassTable | None = None) -> FusionCheckpoint:
    """The CFE of `folder` for this device model (eval mode, CPU); CheckpointError for another device's CFE, another
    label set, or damaged weights."""
    folder = Path(folder)
    card = read_fusion_card(folder)
    got = device_fingerprint(device)
    if got != card["device_hash"]:
        raise CheckpointError(f"{folder} was trained on device checkpoint {card['device_hash'][:16]} but this device model "
                              f"is {got[:16]}; use the CFE trained for this device (or train one: `tandemseg fusion train`)")
    classes = ClassTable.from_json(card["classes"])
    if expect_classes is not None and classes.names != expect_classes.names:
        raise CheckpointError(f"{folder} fuses {len(classes.names)} classes {classes.names[:3]}... but the data has "
                              f"{len(expect_classes.names)} {expect_classes.names[:3]}...; use a CFE trained on this label set")
    try:
        fusion = CollaborativeFusion(FusionConfig.from_json(card["config"]))
    except (SpecError, TypeError) as e:
        raise CheckpointError(f"{folder / CARD}: cannot build the CFE from its config ({e})") from None
    state = read_weights(folder, CheckpointError, "; re-run the recipe in the card")
    check_state_matches(fusion, state, folder)
    fusion.load_state_dict({k: v.float() for k, v in state.items()})
    return FusionCheckpoint(fusion.eval(), classes, card, folder)
