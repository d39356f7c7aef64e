"""MESS checkpoints: the device checkpoint format (weights.safetensors + card.json) with the exit heads added.

The card is a device card (its `config` builds the base network) plus a `mess` section: the exit heads
(`exit_config`) and, once `tandemseg exits search` has run, the chosen `configuration` (inference setting,
exits, thresholds) with its calibration figures. The weights hold the base (`base.*`) and every head
(`heads.*`). `load_checkpoint` refuses such a folder with a pointer here, so a MESS network is never
mistaken for a plain device model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tandemseg.data.classes import ClassTable
from tandemseg.errors import CheckpointError
from tandemseg.exits.network import MultiExitSegmenter
from tandemseg.exits.search import Configuration
from tandemseg.jsonio import write_json
from tandemseg.models.checkpoint import CARD, check_state_matches, read_card, read_weights, save_checkpoint
from tandemseg.models.registry import build_model


@dataclass
class MessCheckpoint:
    net: MultiExitSegmenter
    card: dict
    path: Path

    @property
    def classes(self) -> ClassTable:
        return ClassTable.from_json(self.card["classes"])

    @property
    def configuration(self) -> Configuration | None:
        """The searched configuration, or None before `tandemseg exits search`."""
        c = self.card["mess"].get("configuration")
        return Configuration.from_json(c["config"]) if c else None


def save_mess(folder: str | Path, net: MultiExitSegmenter, classes: ClassTable, *, data: str, recipe: str, stage: int,
              metrics: dict | None = None, extra: dict | None = None, kind: str = "device") -> Path:
    """Weights of base and heads and a card of the base's `kind` (device or cloud) with the `mess` section."""
    mess = {"stage": stage, "exit_config": net.exit_config(), "configuration": None}
    return save_checkpoint(folder, net, kind, classes, data=data, recipe=recipe, metrics=metrics, extra={"mess": mess, **(extra or {})})


def set_configuration(folder: str | Path, search: dict, recipe: str | None = None) -> None:
    """Record a search result (the chosen configuration, the reference, the Pareto front) and the command that
    searched it in the card (the card's `recipe` stays the training command of the weights)."""
    path = Path(folder) / CARD
    card = read_card(folder)
    if "mess" not in card:
        raise CheckpointError(f"{folder} is not a MESS checkpoint (no 'mess' section in its card)")
    card["mess"]["configuration"] = search["best"]
    card["mess"]["search"] = {k: v for k, v in search.items() if k != "best"}
    card["mess"]["search_recipe"] = recipe
    tmp = path.with_suffix(".tmp")
    write_json(tmp, card)
    tmp.replace(path)


def load_mess(folder: str | Path, expect_classes: ClassTable | None = None) -> MessCheckpoint:
    """Rebuild base + heads from the card and load the weights (eval mode, CPU)."""
    folder = Path(folder)
    card = read_card(folder)
    if "mess" not in card:
        raise CheckpointError(f"{folder} is a plain {card['kind']} checkpoint; MESS commands need one from `tandemseg exits train`")
    classes = ClassTable.from_json(card["classes"])
    if expect_classes is not None and classes.names != expect_classes.names:
        raise CheckpointError(f"{folder} predicts {classes.num_classes} classes but the data has {expect_classes.num_classes}")
    try:
        net = MultiExitSegmenter.from_exit_config(build_model(card["kind"], card["config"]), card["mess"]["exit_config"])
    except Exception as e:
        raise CheckpointError(f"{folder}/{CARD}: cannot build the multi-exit network from its card ({e})") from None
    state = read_weights(folder, CheckpointError, f"; re-run the recipe: {card.get('recipe', '?')}")
    check_state_matches(net, state, folder)
    net.load_state_dict(state)
    return MessCheckpoint(net.eval(), card, folder)
