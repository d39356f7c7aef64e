"""`tandemseg codec train | eval`: thin wrappers over train/codec.py (JD feature codec, its baselines)."""

from __future__ import annotations

from pathlib import Path

import torch
import typer
from rich.table import Table

from tandemseg.cli.common import console, metrics_table, out, progress, write_json
from tandemseg.cli.models import recipe_command
from tandemseg.codec import CodecConfig, CodecError, FeatureCodec, device_fingerprint, load_codec, save_codec
from tandemseg.codec.config import DECODERS
from tandemseg.codec.split import resolve_config
from tandemseg.data.spec import open_dataset
from tandemseg.errors import SpecError, TandemsegError
from tandemseg.eval.codec import (
    FeatureSet,
    codec_point,
    evaluate_codec,
    expand_image_codecs,
    image_codec_point,
    split_feature_set,
)
from tandemseg.eval.evaluate import evaluate
from tandemseg.eval.plots import plot_rd
from tandemseg.jsonio import dumps
from tandemseg.models.checkpoint import load_checkpoint
from tandemseg.models.flops import count_gflops
from tandemseg.train.codec import CodecTrainConfig, train_codec

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
    out.print(metrics_table(title, m, METRIC_KEYS))
    console.print("[dim]encode_ms / decode_ms: the codec's own layers and range coding, split features given[/dim]")


def rd(
    data: str = typer.Option(..., help="dataset spec"),
    split: str = typer.Option("val", help="data split the points are measured on"),
    device_ckpt: Path = typer.Option(..., help="the device checkpoint the feature codecs were trained on"),
    cloud_ckpt: Path = typer.Option(..., help="cloud model that segments the image-codec frames"),
    codec_ckpts: list[Path] = typer.Option([], "--codec-ckpt", help="feature codec checkpoint (repeat): jd, sd+d or no-compression"),
    image_codecs: str = typer.Option("png,jpeg:10..90,webp:10..90", help="image codecs: png, jpeg:Q, webp:Q, avif:Q; Q1..Q2 steps by 20"),
    limit: int = typer.Option(None, help="first N frames only"),
    threads: int = typer.Option(1, min=1, help="torch CPU threads"),
    json_path: Path = typer.Option(..., "--json", help="write the points here"),
    plot: Path = typer.Option(None, help="RD plot (default: next to --json)"),
) -> None:
    """JD Fig. 5 on real bytes: every feature codec (decoded bitstreams) and every image codec (the cloud model on the
    decoded frame) as {method, setting, bytes_per_frame, bpp, miou}, with the cloud on the original frames."""
    torch.set_num_threads(threads)
    try:
        image_list = expand_image_codecs(image_codecs)
    except (ValueError, SpecError) as e:
        raise SpecError(f"--image-codecs: {e}") from None
    dataset = open_dataset(data, split)
    dev = load_checkpoint(device_ckpt, expect_kind="device", expect_classes=dataset.classes)
    cloud = load_checkpoint(cloud_ckpt, expect_kind="cloud", expect_classes=dataset.classes)
    codecs = [load_codec(c, device=dev.model).codec for c in codec_ckpts]  # checked before the slow part
    nc, ignore = dataset.classes.num_classes, dataset.classes.ignore_index
    n = len(dataset) if limit is None else min(limit, len(dataset))
    points, features = [], {}
    with progress() as bar:
        for path, codec in zip(codec_ckpts, codecs, strict=True):
            index = codec.cfg.split_index
            if index not in features:
                features[index] = _features(dev.model, dataset, index, False, limit, f"{split}, stage {index}")
            task = bar.add_task(f"{path.name}", total=n, info="")
            points.append({"ckpt": str(path), **codec_point(codec, features[index], nc, ignore, on_frame=lambda t=task: bar.advance(t))})
        for codec_name in image_list:
            task = bar.add_task(f"cloud on {codec_name}", total=n, info="")
            points.append(image_codec_point(cloud.model, dataset, codec_name, limit, on_frame=lambda t=task: bar.advance(t)))
    device_only = evaluate(dev.model, dataset, limit=limit)["miou"]
    cloud_original = evaluate(cloud.model, dataset, limit=limit)["miou"]
    payload = {"data": data, "split": split, "frames": n, "device_ckpt": str(device_ckpt), "cloud_ckpt": str(cloud_ckpt),
               "bpp": "bits / (H x W) of the full-resolution input frame", "points": points,
               "references": {"cloud_original_miou": cloud_original, "device_miou": device_only,
                              "cloud_parameters": sum(p.numel() for p in cloud.model.parameters()),
                              "cloud_gflops": count_gflops(cloud.model, (1, 3, *dataset[0].image.shape[:2]))}}
    print_rd(payload)
    write_json(json_path, payload)
    plot_rd(payload, plot or json_path.with_suffix(".png"), title=f"{data} {split}: mIoU vs rate on real bytes")


def print_rd(payload: dict) -> None:
    table = Table(title=f"rate-distortion on {payload['data']} {payload['split']} ({payload['frames']} frames)")
    for col in ("method", "setting", "bytes/frame", "bpp", "mIoU %"):
        table.add_column(col, justify="left" if col in ("method", "setting") else "right")
    for p in sorted(payload["points"], key=lambda p: (p["method"], p["bpp"])):
        table.add_row(p["method"], p["setting"], f"{p['bytes_per_frame']:.0f}", f"{p['bpp']:.4f}", f"{100 * p['miou']:.1f}")
    out.print(table)
    r = payload["references"]
    out.print(f"cloud on the original frames {100 * r['cloud_original_miou']:.1f}%, device alone {100 * r['device_miou']:.1f}%")
