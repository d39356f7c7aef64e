"""`tandemseg codec train | eval`: thin wrappers over train/codec.py (JD feature codec, its baselines)."""

from __future__ import annotations

from pathlib import Path

import torch
import typer
from rich.table import Table

from tandemseg.cli.common import console, out, progress, write_json
from tandemseg.cli.models import recipe_command
from tandemseg.codec import CodecConfig, CodecError, FeatureCodec, device_fingerprint, load_codec, save_codec
from tandemseg.codec.config import DECODERS
from tandemseg.codec.split import resolve_config
from tandemseg.data.spec import open_dataset
from tandemseg.errors import SpecError, TandemsegError
from tandemseg.jsonio import dumps
from tandemseg.models.checkpoint import load_checkpoint
from tandemseg.train.codec import CodecTrainConfig, FeatureSet, evaluate_codec, split_feature_set, train_codec

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Feature codec (JD): train and evaluate on real bitstreams.")

METRIC_KEYS = ("miou", "bytes_per_frame", "bpp", "frames", "encode_ms", "decode_ms")


def _features(device, dataset, split_index: int, mirror: bool, limit: int | None, what: str) -> FeatureSet:
    n = len(dataset) if limit is None else min(limit, len(dataset))
    with progress() as bar:
        task = bar.add_task(f"split features ({what})", total=n, info="")
        return split_feature_set(device, dataset, split_index, mirror, limit, on_frame=lambda: bar.advance(task))


@app.command("train")
def train(
    device_ckpt: Path = typer.Option(..., help="device checkpoint whose encoder is split (frozen; its hash goes into every bitstream)"),
    data: str = typer.Option("synthetic", help="dataset spec: synthetic | camvid:PATH | ..."),
    out_dir: Path = typer.Option(..., "--out", help="codec checkpoint folder (weights.safetensors, card.json, history.jsonl)"),
    split: str = typer.Option("-1", help="stage to split the device encoder at: an index into feature_info or its module name"),
    lmbda: float = typer.Option(1.0, help="lambda of eq. 3 (loss = bpp + lambda x CE): larger buys accuracy with bytes"),
    decoder: str = typer.Option("jd", help=f"cloud-side decoder: {' | '.join(DECODERS)} (none = the float-feature baseline)"),
    K: int = typer.Option(3, "--K", help="over-parameterised ASPP: conv+BN copies per subblock (Fig. 4)"),
    overparam: bool = typer.Option(True, help="train the over-parameterised ASPP (False: plain ASPP)"),
    latent_channels: int = typer.Option(32, help="channels of the coded latent r"),
    epochs: int = typer.Option(60, min=1, help="epochs over the cached training features"),
    batch_size: int = typer.Option(8, min=1),
    lr: float = typer.Option(1e-3, help="Adam learning rate (cosine decay)"),
    train_limit: int = typer.Option(None, help="first N training frames only"),
    val_limit: int = typer.Option(None, help="first N val frames only"),
    eval_every: int = typer.Option(10, min=1, help="epochs between validation passes on real bitstreams"),
    seed: int = typer.Option(0),
    threads: int = typer.Option(1, min=1, help="torch CPU threads"),
) -> None:
    """Train a feature codec on the frozen device encoder (eq. 3), select nothing on val (the last epoch is kept),
    and write the checkpoint with its val figures measured on real bitstreams."""
    torch.set_num_threads(threads)
    train_set, val_set = open_dataset(data, "train"), open_dataset(data, "val")
    dev = load_checkpoint(device_ckpt, expect_kind="device", expect_classes=train_set.classes)
    try:
        cfg = resolve_config(CodecConfig(split=split, num_classes=train_set.classes.num_classes, decoder=decoder, K=K,
                                         overparam=overparam, latent_channels=latent_channels, lmbda=lmbda), dev.model.feature_info)
        codec = FeatureCodec(cfg)
    except (CodecError, ValueError) as e:
        raise SpecError(str(e)) from None
    tcfg = CodecTrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, eval_every=eval_every)
    train_z = _features(dev.model, train_set, cfg.split_index, tcfg.mirror, train_limit, "train, and mirrored")
    val_z = _features(dev.model, val_set, cfg.split_index, False, val_limit, "val")
    out_dir.mkdir(parents=True, exist_ok=True)
    log = (out_dir / "history.jsonl").open("w")
    with progress() as bar:
        task = bar.add_task(f"codec {decoder} lambda={lmbda:g}", total=epochs, info="")

        def on_epoch(r: dict) -> None:
            log.write(dumps(r).replace("\n", " ").strip() + "\n")
            log.flush()
            info = f"bpp {r['train_bpp']:.4f} ce {r['train_ce']:.3f}" + (f" | val mIoU {r['val_miou']:.3f}" if "val_miou" in r else "")
            bar.update(task, advance=1, info=info)

        history = train_codec(codec, train_z, val_z, tcfg, train_set.classes.num_classes, train_set.classes.ignore_index, on_epoch)
    log.close()
    codec.eval().reparameterize()  # the inference topology (Fig. 4): what the cloud runs and the card stores
    val = evaluate_codec(codec, val_z, train_set.classes.num_classes, train_set.classes.ignore_index)
    save_codec(out_dir, codec, device_fingerprint(dev.model), data=data, recipe=recipe_command(),
               metrics={"val": val, "last_epoch": history[-1]}, extra={"device_ckpt": str(device_ckpt), "train": vars(tcfg)})
    print_metrics(f"{out_dir} on {data} val (real bitstreams, after re-parameterisation)", val)


@app.command("eval")
def eval_cmd(
    ckpt: Path = typer.Option(..., help="codec checkpoint folder"),
    device_ckpt: Path = typer.Option(..., help="the device checkpoint the codec was trained on (checked by hash)"),
    data: str = typer.Option("synthetic", help="dataset spec"),
    split: str = typer.Option("val", help="data split (never test for selection)"),
    shift: str = typer.Option("clean", help="shift to evaluate under"),
    limit: int = typer.Option(None, help="first N frames only"),
    threads: int = typer.Option(1, min=1, help="torch CPU threads"),
    json_path: Path = typer.Option(None, "--json", help="write the figures here"),
) -> None:
    """mIoU from decoded bitstreams, bytes per frame, bpp on input pixels, encode / decode ms."""
    torch.set_num_threads(threads)
    dataset = open_dataset(data, split, shift)
    dev = load_checkpoint(device_ckpt, expect_kind="device", expect_classes=dataset.classes)
    ck = load_codec(ckpt, device=dev.model)
    if ck.codec.cfg.num_classes != dataset.classes.num_classes:
        raise TandemsegError(f"{ckpt} predicts {ck.codec.cfg.num_classes} classes but {data} has {dataset.classes.num_classes}")
    feats = _features(dev.model, dataset, ck.codec.cfg.split_index, False, limit, split)
    result = evaluate_codec(ck.codec, feats, dataset.classes.num_classes, dataset.classes.ignore_index)
    payload = {"ckpt": str(ckpt), "device_ckpt": str(device_ckpt), "data": data, "split": split, "shift": shift,
               "decoder": ck.codec.cfg.decoder, "lmbda": ck.codec.cfg.lmbda, "split_stage": ck.codec.cfg.split_index,
               "parameters": ck.codec.parameter_counts(), **result}
    print_metrics(f"{ckpt} on {data} {split} ({shift})", result)
    write_json(json_path, payload)


def print_metrics(title: str, m: dict) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in METRIC_KEYS:
        table.add_row(k, f"{m[k]:.4g}" if isinstance(m[k], float) else str(m[k]))
    out.print(table)
    console.print("[dim]encode_ms / decode_ms: the codec's own layers and range coding, split features given[/dim]")
