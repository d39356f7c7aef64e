"""One trainer for every model: poly LR, AdamW/SGD, ignore index, class weighting or OHEM,
augmentation, per-epoch validation, best-on-val selection, resume, JSON-lines log, curve PNG."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tandemseg.data.base import SegDataset
from tandemseg.data.tensors import to_tensor
from tandemseg.errors import TandemsegError
from tandemseg.eval.evaluate import evaluate
from tandemseg.models.checkpoint import save_checkpoint, update_card
from tandemseg.train.augment import AugmentConfig, ColorJitter, corrupt, scale_crop_flip

OPTIMIZERS = ("adamw", "sgd")
CLASS_WEIGHTING = ("none", "enet")


@dataclass
class TrainConfig:
    epochs: int = 50
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # one of OPTIMIZERS
    poly_power: float = 0.9  # lr = base * (1 - it/total)^power
    warmup_iters: int = 50
    class_weighting: str = "enet"  # 'enet': w_c = 1/ln(1.02 + p_c) (ENet), tames rare classes
    ohem_fraction: float = 0.0  # >0: average the loss only over the hardest fraction of pixels
    val_every: int = 1
    val_limit: int | None = None  # evaluate on the first N val frames only (quick runs)
    seed: int = 0
    threads: int = 0  # 0: torch default
    # Fine-tuning an ImageNet encoder: its first `freeze_stages` stages (stem included) stay fixed, weights and
    # BN statistics (low-level filters transfer as they are and the high-resolution stages cost the most to
    # back-propagate on a CPU); the rest of the encoder learns at lr * encoder_lr_mult.
    freeze_stages: int = 0
    encoder_lr_mult: float = 1.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise TandemsegError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.class_weighting not in CLASS_WEIGHTING:
            raise TandemsegError(f"unknown class weighting {self.class_weighting!r}; valid: {', '.join(CLASS_WEIGHTING)}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise TandemsegError("epochs and batch size must be >= 1 and lr > 0")
        if not 0.0 <= self.ohem_fraction < 1.0:
            raise TandemsegError("ohem_fraction must be in [0, 1)")
        if self.freeze_stages < 0 or self.encoder_lr_mult <= 0:
            raise TandemsegError("freeze_stages must be >= 0 and encoder_lr_mult > 0")


@dataclass
class TrainState:
    epoch: int = 0
    iteration: int = 0
    best_miou: float = -1.0
    history: list[dict] = field(default_factory=list)


def adam_cosine(params, lr: float, epochs: int, items: int, batch_size: int, weight_decay: float = 0.0):
    """Adam with a cosine decay to lr / 100 over every step of `epochs` passes over `items` in batches: the schedule of
    the small trainers on cached features (codec, CFE). Returns (optimizer, scheduler, steps per epoch)."""
    steps = max(1, math.ceil(items / batch_size))
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps, eta_min=lr / 100), steps


def class_weights(labels: list[np.ndarray], num_classes: int, ignore: int) -> torch.Tensor:
    """ENet weighting w_c = 1 / ln(1.02 + p_c) from the training label frequencies p_c."""
    counts = np.zeros(num_classes, dtype=np.float64)
    for lab in labels:
        v = lab[lab != ignore]
        counts += np.bincount(v.ravel(), minlength=num_classes)[:num_classes]
    p = counts / max(counts.sum(), 1.0)
    return torch.tensor(1.0 / np.log(1.02 + p), dtype=torch.float32)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore: int, ohem: float) -> torch.Tensor:
    """Cross-entropy with ignore index; with OHEM, the mean over the hardest `ohem` fraction of valid pixels."""
    if ohem <= 0:
        return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore)
    pixel = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore, reduction="none").flatten()
    valid = pixel[target.flatten() != ignore]
    if valid.numel() == 0:
        return pixel.sum() * 0.0
    k = max(1, int(valid.numel() * ohem))
    return valid.topk(k).values.mean()


class TrainingBatches:
    """Augmented training batches: frames held in memory (decoding PNGs every epoch would cost more than small
    models' steps), corruption, scaled crop and flip per frame, colour jitter per batch. Shared by every trainer."""

    def __init__(self, train_set: SegDataset, augment: AugmentConfig) -> None:
        self.train_set, self.augment = train_set, augment
        self.ignore = train_set.classes.ignore_index
        self.jitter = ColorJitter(augment.color_jitter, augment.hue)
        self._cache: list | None = None

    def samples(self) -> list:
        if self._cache is None:
            self._cache = [self.train_set[i] for i in range(len(self.train_set))]
        return self._cache

    def batch(self, indices: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for i in indices:
            s = self.samples()[int(i)]
            img = corrupt(s.image, self.augment, rng)
            x = to_tensor([img])[0].contiguous()  # (3, H, W)
            y = torch.from_numpy(s.label)
            x, y = scale_crop_flip(x, y, self.augment, rng, self.ignore)
            images.append(x)
            labels.append(y)
        return self.jitter(torch.stack(images), rng), torch.stack(labels)  # (B,3,h,w), (B,h,w)


class Trainer:
    """Trains `model` on `train_set`, validates on `val_set`, keeps best weights and a resumable state in `out`."""

    def __init__(
        self, model: nn.Module, kind: str, train_set: SegDataset, val_set: SegDataset, out: str | Path,
        cfg: TrainConfig, data_spec: str, recipe: str, card_extra: dict | None = None,
    ) -> None:
        cfg.validate()
        self.model, self.kind, self.cfg = model, kind, cfg
        self.train_set, self.val_set = train_set, val_set
        self.out = Path(out)
        self.data_spec, self.recipe = data_spec, recipe
        self.card_extra = dict(card_extra or {})  # e.g. init_from: where a warm start's weights came from
        self.classes = train_set.classes
        self.ignore = self.classes.ignore_index
        self.data = TrainingBatches(train_set, cfg.augment)
        self.state = TrainState()

    # ---- optimisation ----
    def _frozen_modules(self) -> list[nn.Module]:
        encoder = getattr(self.model, "encoder", None)
        if self.cfg.freeze_stages == 0:
            return []
        if encoder is None or not hasattr(encoder, "stage_modules"):
            raise TandemsegError(f"freeze_stages needs a model with a staged encoder; {type(self.model).__name__} has none")
        return encoder.stage_modules(self.cfg.freeze_stages)

    def _set_train_mode(self) -> None:
        """Train mode, except the frozen stages, whose BN statistics must stay the pretrained ones."""
        self.model.train()
        for m in self._frozen_modules():
            m.eval()

    def _optimizer(self) -> torch.optim.Optimizer:
        frozen = {id(p) for m in self._frozen_modules() for p in m.parameters()}
        encoder = {id(p) for p in getattr(self.model, "encoder", nn.Module()).parameters()}
        buckets: dict[tuple[bool, bool], list] = {(e, d): [] for e in (False, True) for d in (False, True)}
        for p in self.model.parameters():
            if id(p) in frozen:
                p.requires_grad_(False)
                continue
            buckets[(id(p) in encoder, p.ndim > 1)].append(p)  # no weight decay on BN and biases
        groups = [
            {"params": ps, "weight_decay": self.cfg.weight_decay if decay else 0.0, "lr_mult": self.cfg.encoder_lr_mult if enc else 1.0}
            for (enc, decay), ps in buckets.items() if ps
        ]
        if self.cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.cfg.lr, momentum=0.9, nesterov=True)
        return torch.optim.AdamW(groups, lr=self.cfg.lr)

    def _lr(self, it: int, total: int) -> float:
        warm = min(1.0, (it + 1) / max(1, self.cfg.warmup_iters))
        return self.cfg.lr * warm * (1 - min(it, total - 1) / total) ** self.cfg.poly_power

    # ---- resume ----
    def _save_state(self, opt: torch.optim.Optimizer) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / "last.pt.tmp"
        torch.save({"model": self.model.state_dict(), "optimizer": opt.state_dict(), "state": asdict(self.state), "config": asdict(self.cfg)}, tmp)
        tmp.replace(self.out / "last.pt")

    def _try_resume(self, opt: torch.optim.Optimizer) -> bool:
        path = self.out / "last.pt"
        if not path.is_file():
            return False
        try:
            blob = torch.load(path, map_location="cpu", weights_only=False)
            self.model.load_state_dict(blob["model"])
            opt.load_state_dict(blob["optimizer"])
        except Exception as e:
            raise TandemsegError(f"cannot resume from {path} ({e}); delete it to start over, or pass a fresh --out") from None
        self.state = TrainState(**blob["state"])
        return True

    # ---- main loop ----
    def fit(self, resume: bool = True, on_progress: Callable[[dict], None] | None = None) -> TrainState:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        opt = self._optimizer()
        if resume and self._try_resume(opt):
            if on_progress:
                on_progress({"event": "resumed", "epoch": self.state.epoch})
        samples = self.data.samples()
        weight = class_weights([s.label for s in samples], self.classes.num_classes, self.ignore) if cfg.class_weighting == "enet" else None
        steps_per_epoch = math.ceil(len(samples) / cfg.batch_size)
        total = steps_per_epoch * cfg.epochs
        while self.state.epoch < cfg.epochs:
            epoch = self.state.epoch
            rng = np.random.default_rng([cfg.seed, epoch])  # per-epoch stream: resume replays the same batches
            order = rng.permutation(len(samples))
            self._set_train_mode()
            t0, losses = time.perf_counter(), []
            for b in range(steps_per_epoch):
                idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                if len(idx) < 2:  # BatchNorm needs more than one sample
                    continue
                x, y = self.data.batch(idx, rng)
                for g in opt.param_groups:
                    g["lr"] = self._lr(self.state.iteration, total) * g["lr_mult"]
                loss = segmentation_loss(self.model(x), y, weight, self.ignore, cfg.ohem_fraction)
                if not torch.isfinite(loss):
                    raise TandemsegError(f"loss became {loss.item()} at epoch {epoch + 1}; lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                self.state.iteration += 1
                losses.append(loss.item())
                if on_progress:
                    on_progress({"event": "step", "epoch": epoch, "step": b + 1, "steps": steps_per_epoch, "loss": float(np.mean(losses))})
            record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else None, "lr": self._lr(self.state.iteration - 1, total), "train_s": time.perf_counter() - t0}
            if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs:
                record.update(self._validate())
            self.state.epoch += 1
            self.state.history.append(record)
            self._log(record)
            self._save_state(opt)
            if on_progress:
                on_progress({"event": "epoch", **record})
        self._record_last_epoch()
        return self.state

    def _record_last_epoch(self) -> None:
        """The card keeps the best epoch's weights; it also says what the last epoch scored, so the gap is visible."""
        validated = [h for h in self.state.history if h.get("val_miou") is not None]
        if not validated or not (self.out / "card.json").is_file():
            return
        last = validated[-1]
        update_card(self.out, {"last_epoch": {"epoch": last["epoch"], "val_miou": last["val_miou"]}, "epochs_run": self.state.epoch})

    def _validate(self) -> dict:
        t0 = time.perf_counter()
        metrics = evaluate(self.model, self.val_set, batch_size=4, limit=self.cfg.val_limit)
        rec = {"val_miou": metrics["miou"], "val_pixel_acc": metrics["pixel_acc"], "val_s": time.perf_counter() - t0}
        if metrics["miou"] > self.state.best_miou:
            self.state.best_miou = metrics["miou"]
            save_checkpoint(
                self.out, self.model, self.kind, self.classes, data=self.data_spec, recipe=self.recipe,
                metrics={"val": metrics, "epoch": self.state.epoch + 1},
                extra={"train_config": asdict(self.cfg), "frame_hw": list(self.val_set[0].image.shape[:2]), **self.card_extra},
            )
            rec["best"] = True
        return rec

    def _log(self, record: dict) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        plot_curves(self.state.history, self.out / "curve.png")


def plot_curves(history: list[dict], path: Path) -> None:
    """Training loss and val mIoU per epoch, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(ep, [h["train_loss"] for h in history], "-o", ms=3)
    a.set(xlabel="epoch", ylabel="train loss", title="loss")
    val = [(h["epoch"], h["val_miou"]) for h in history if h.get("val_miou") is not None]
    if val:
        b.plot(*zip(*val, strict=True), "-o", ms=3, color="C1")
    b.set(xlabel="epoch", ylabel="val mIoU", title="validation")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
