"""Checkpoint = folder with `weights.safetensors` + `card.json` (config, classes, data, recipe, metrics, commit).

The card carries the typed config so a checkpoint rebuilds its own architecture (nanoGPT-style);
loading validates the kind, the class table and every tensor name and shape, failing with a message
that says what does not match.
"""

from __future__ import annotations

import datetime as _dt
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from tandemseg.data.classes import ClassTable
from tandemseg.digest import file_sha256
from tandemseg.errors import CheckpointError
from tandemseg.jsonio import write_json
from tandemseg.models.registry import MODEL_KINDS, build_model

CARD_VERSION = 1
WEIGHTS = "weights.safetensors"
CARD = "card.json"


@dataclass
class Checkpoint:
    model: nn.Module
    card: dict
    path: Path

    @property
    def kind(self) -> str:
        return self.card["kind"]

    @property
    def classes(self) -> ClassTable:
        return ClassTable.from_json(self.card["classes"])


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def save_checkpoint(
    folder: str | Path, model: nn.Module, kind: str, classes: ClassTable, *, data: str, recipe: str,
    metrics: dict | None = None, extra: dict | None = None,
) -> Path:
    """Write weights + card atomically enough: weights first, card last (a card means a complete checkpoint)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Float tensors are stored as float16: it halves the committed checkpoints (the repo's checkpoints/
    # must stay under 40 MB) and loading casts back to float32; cards record it.
    state = {k: (v.half() if v.is_floating_point() else v).detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = folder / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(folder / WEIGHTS)
    card = {
        "format_version": CARD_VERSION,
        "kind": kind,
        "config": model.cfg.to_json(),
        "classes": classes.to_json(),
        "input_scale": model.cfg.input_scale,
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_dtype": "float16",
        "weights_sha256": file_sha256(folder / WEIGHTS),
        "data": data,
        "recipe": recipe,
        "metrics": metrics or {},
        "commit": git_commit(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    write_json(folder / CARD, card)
    return folder


def update_card(folder: str | Path, metrics: dict) -> None:
    """Merge `metrics` into the card's metrics (written atomically; weights untouched)."""
    path = Path(folder) / CARD
    card = json.loads(path.read_text())
    card.setdefault("metrics", {}).update(metrics)
    tmp = path.with_suffix(".tmp")
    write_json(tmp, card)
    tmp.replace(path)


def read_json_card(path: Path, error: type[Exception], required: tuple[str, ...], hint: str) -> dict:
    """A card's JSON with its required keys, or `error` saying what is wrong (shared by model and codec cards)."""
    if not path.is_file():
        raise error(f"{path.parent} has no {path.name}; {hint}")
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path} is not valid JSON ({e}); restore it from version control or re-run the recipe") from None
    missing = [k for k in required if k not in card] if isinstance(card, dict) else list(required)
    if missing:
        raise error(f"{path} lacks the key(s) {missing}; it was not written by tandemseg")
    return card


def read_weights(folder: Path, error: type[Exception], hint: str = "") -> dict[str, torch.Tensor]:
    """`folder/weights.safetensors`, or `error` naming what is missing or corrupt (model and codec checkpoints).

    When the card records `weights_sha256` (every checkpoint saved since it was added), the file must match it:
    safetensors has no checksum of its own, so a flipped bit in a tensor would otherwise load silently."""
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise error(f"{folder} has a card but no {WEIGHTS}")
    expected = _card_digest(folder / CARD)
    if expected is not None and file_sha256(weights) != expected:
        raise error(f"{weights} is corrupt or truncated: it does not match the sha256 its card records (damaged or altered after saving){hint}")
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise error(f"{weights} is corrupt or truncated ({e}){hint}") from None


def _card_digest(card: Path) -> str | None:
    try:
        value = json.loads(card.read_text()).get("weights_sha256")
    except (OSError, ValueError, AttributeError):
        return None  # the card's own problems are reported by whoever reads it
    return value if isinstance(value, str) else None


def read_card(folder: str | Path) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}. Pass a folder holding {WEIGHTS} and {CARD} (e.g. checkpoints/synthetic-device).")
    card_path = folder / CARD
    card = read_json_card(card_path, CheckpointError, ("kind", "config", "classes"),
                          "it is not a tandemseg checkpoint (or training has not saved one yet)")
    if card["kind"] not in MODEL_KINDS:
        raise CheckpointError(f"{card_path} names model kind {card['kind']!r}; valid: {', '.join(MODEL_KINDS)}")
    return card


def load_checkpoint(folder: str | Path, expect_kind: str | None = None, expect_classes: ClassTable | None = None) -> Checkpoint:
    """Rebuild the model from its card and load its weights; eval mode, CPU."""
    folder = Path(folder)
    card = read_card(folder)
    if "mess" in card:
        raise CheckpointError(f"{folder} is a multi-exit (MESS) checkpoint: load it with tandemseg.exits.checkpoint.load_mess "
                              "or use it through `tandemseg exits ...` / `--mess-ckpt`")
    if expect_kind is not None and card["kind"] != expect_kind:
        raise CheckpointError(f"{folder} holds a {card['kind']} model but a {expect_kind} model is needed here")
    classes = ClassTable.from_json(card["classes"])
    if expect_classes is not None and classes.names != expect_classes.names:
        raise CheckpointError(
            f"{folder} predicts {classes.num_classes} classes {list(classes.names)[:4]}... but the data has "
            f"{expect_classes.num_classes} classes {list(expect_classes.names)[:4]}...; use a checkpoint trained on this label set"
        )
    try:
        model = build_model(card["kind"], card["config"])
    except Exception as e:
        raise CheckpointError(f"{folder}/{CARD}: cannot build the model from its config ({e})") from None
    state = read_weights(folder, CheckpointError, f"; re-run the recipe: {card.get('recipe', '?')}")
    check_state_matches(model, state, folder)
    model.load_state_dict(state)
    model.eval()
    return Checkpoint(model, card, folder)


def check_state_matches(model: nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: weights do not fit the architecture in the card (missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}); the card and weights come from different models"
        )
    for k, v in expected.items():
        if state[k].shape != v.shape:
            raise CheckpointError(
                f"{where}: tensor {k} has shape {tuple(state[k].shape)} but the card's architecture needs {tuple(v.shape)}; "
                f"the card and weights come from different models (copy both files from the same checkpoint folder)"
            )
