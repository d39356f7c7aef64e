"""`tandemseg exits train | search | eval`: thin wrappers over the MESS library (exits/) and train/exits.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import typer

from tandemseg.cli.common import console, metrics_table, out, progress, write_json
from tandemseg.cli.models import recipe_command
from tandemseg.data.base import FirstFrames
from tandemseg.data.spec import open_dataset, parse_dataspec
from tandemseg.errors import SpecError
from tandemseg.eval.exit_policies import collect_scores, default_path, policy_curves
from tandemseg.eval.exits import evaluate_mess
from tandemseg.eval.plots import plot_exit_policies
from tandemseg.exits.calibrate import collect_cache
from tandemseg.exits.checkpoint import load_mess, save_mess, set_configuration
from tandemseg.exits.costs import gflops_table, latency_table, place_exit_points, stage_gflops
from tandemseg.exits.heads import ExitSpec
from tandemseg.exits.losses import STAGE1_LOSSES
from tandemseg.exits.network import FINAL
from tandemseg.exits.search import SETTINGS, Constraint, search
from tandemseg.exits.train import stage1_network, stage2_network
from tandemseg.models.checkpoint import load_checkpoint
from tandemseg.train.exits import ExitTrainConfig, frames_and_labels, per_exit_miou, train_exits
from tandemseg.train.recipes import default_recipe

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Multi-exit device networks (MESS): train, search, evaluate.")

DEFAULT_HEADS = "crm1-b0-rdi0-fcn,crm2-b1-rdi0-fcn,crm2-b1-rdi1-dlb"  # eq. 1 candidates trained per exit point in stage 2


def parse_heads(text: str) -> list[ExitSpec]:
    try:
        return [ExitSpec.from_name(t.strip()) for t in text.split(",") if t.strip()]
    except (ValueError, SpecError) as e:
        raise SpecError(f"--heads takes names like crm2-b1-rdi0-fcn (crm 1/2/4/8, blocks 0-2, rdi 0/1, head fcn|dlb): {e}") from None


@app.command("train")
def train(
    data: str = typer.Option(..., help="dataset spec"),
    out_dir: Path = typer.Option(..., "--out", help="MESS checkpoint folder (weights, card, log.jsonl, last.pt)"),
    stage: int = typer.Option(1, help="1: exit-aware pre-training from a segmenter checkpoint; 2: candidate heads on a frozen backbone"),
    base_ckpt: Path = typer.Option(None, "--base-ckpt", "--device-ckpt",
                                   help="the segmenter (device or cloud) to add exits to: stage 1, or stage 2 without --init (Table 5's 'frozen' row)"),
    init: Path = typer.Option(None, help="stage 2: the stage-1 MESS checkpoint whose backbone the heads train on"),
    exits: int = typer.Option(3, min=1, help="exit points from --base-ckpt, placed at equal shares of the encoder's FLOPs (sec. 4.1)"),
    exit_loss: str = typer.Option("dropout", help="stage 1: dropout (eq. 2) | all (end to end) | final (single-exit control)"),
    heads: str = typer.Option(DEFAULT_HEADS, help="stage 2: candidate head architectures per exit point (eq. 1 names)"),
    loss: str = typer.Option("pfd", help="stage 2: pfd (eq. 3) | ce | kd"),
    label_stride: int = typer.Option(2, min=1, help="stage 2: compute the loss on every k-th label pixel (CPU cost; 1 = full resolution)"),
    epochs: int = typer.Option(6, min=1),
    batch_size: int = typer.Option(8, min=2),
    lr: float = typer.Option(5e-4, help="peak learning rate (poly decay)"),
    val_limit: int = typer.Option(None, help="validate on the first N val frames"),
    train_limit: int = typer.Option(None, help="train on the first N training frames only (quick runs)"),
    seed: int = typer.Option(0),
    threads: int = typer.Option(1, min=1, help="torch CPU threads"),
) -> None:
    """Stage 1 or 2 of MESS training; the last epoch is kept (nothing selected on val), every exit scored on val."""
    torch.set_num_threads(threads)
    if loss not in ("pfd", "ce", "kd"):
        raise SpecError(f"unknown --loss {loss!r}; valid: pfd, ce, kd")
    train_set, val_set = open_dataset(data, "train"), open_dataset(data, "val")
    if train_limit:
        train_set = FirstFrames(train_set, train_limit)
    if stage not in (1, 2):
        raise SpecError(f"--stage is 1 or 2, got {stage}")
    if exit_loss not in STAGE1_LOSSES:
        raise SpecError(f"unknown --exit-loss {exit_loss!r}; valid: {', '.join(STAGE1_LOSSES)}")
    if stage == 2 and init is not None:
        if base_ckpt is not None:
            raise SpecError("give stage 2 either --init (a stage-1 backbone) or --base-ckpt (a plain segmenter, frozen as it is), not both")
        stage1 = load_mess(init, expect_classes=train_set.classes)
        net, source, kind = stage2_network(stage1.net, parse_heads(heads)), str(init), stage1.card["kind"]
    elif base_ckpt is None:
        raise SpecError("give --base-ckpt (the segmenter to add exits to)" + (" or --init (a stage-1 MESS folder)" if stage == 2 else ""))
    else:
        base = load_checkpoint(base_ckpt, expect_classes=train_set.classes)
        points = place_exit_points(stage_gflops(base.model, tuple(train_set[0].image.shape[:2])), exits)
        net, source, kind = stage1_network(base.model, points), str(base_ckpt), base.card["kind"]
        if stage == 2:
            net = stage2_network(net, parse_heads(heads))
    augment = default_recipe(kind, parse_dataspec(data)[0]).augment  # the base model's own training distribution
    cfg = ExitTrainConfig(stage=stage, exit_loss=exit_loss, epochs=epochs, batch_size=batch_size, lr=lr, loss=loss, val_limit=val_limit, seed=seed, augment=augment,
                          label_stride=label_stride)
    with progress() as bar:
        task = bar.add_task(f"MESS stage {stage}", total=epochs, info="")

        def on_epoch(r: dict) -> None:
            best = max(r["val_miou"].items(), key=lambda kv: kv[1] if kv[0] != FINAL else -1, default=("-", 0.0))
            bar.update(task, completed=r["epoch"], info=f"loss {r['train_loss']:.3f} final {r['val_miou'][FINAL]:.3f} best early {best[1]:.3f}")

        history = train_exits(net, train_set, val_set, cfg, out_dir, on_epoch)
    metrics = {"val_exit_miou": history[-1]["val_miou"], "epochs_run": len(history)}
    save_mess(out_dir, net, train_set.classes, data=data, recipe=recipe_command(), stage=stage, metrics=metrics,
              extra={"mess_source": source, "train_config": {k: v for k, v in vars(cfg).items() if k != "augment"}}, kind=kind)
    print_exit_mious(f"{out_dir}: val mIoU per exit after stage {stage}", history[-1]["val_miou"])


@app.command("search")
def search_cmd(
    ckpt: Path = typer.Option(..., help="stage-2 MESS checkpoint"),
    data: str = typer.Option(..., help="dataset spec"),
    split: str = typer.Option("train", help="calibration split: train (never val or test)"),
    setting: str = typer.Option("input_dependent", help=f"inference setting: {' | '.join(SETTINGS)}"),
    max_miou_drop: float = typer.Option(None, help="at most this mIoU below the final exit on the calibration frames (0.01 = 1 pp)"),
    max_gflops: float = typer.Option(None, help="at most this many GFLOPs per frame"),
    max_latency_ms: float = typer.Option(None, help="at most this CPU latency per frame (measured here)"),
    objective: str = typer.Option("gflops", help="what to minimise: gflops | latency_ms | miou (maximised)"),
    limit: int = typer.Option(None, help="first N calibration frames"),
    threads: int = typer.Option(1, min=1, help="torch threads (the latency table is measured with them)"),
    out_dir: Path = typer.Option(..., "--out", help="the searched checkpoint (a copy of --ckpt with the configuration in its card)"),
    json_path: Path = typer.Option(None, "--json", help="write the search result (best, Pareto front, reference) here"),
) -> None:
    """Exhaustive configuration search (eq. 4-6) on cached per-exit predictions of calibration frames."""
    torch.set_num_threads(threads)
    if split in ("val", "test"):
        raise SpecError(f"--split {split} is refused: the configuration is searched on calibration (train) frames, never on evaluation frames")
    dataset = open_dataset(data, split)
    ck = load_mess(ckpt, expect_classes=dataset.classes)
    hw = tuple(dataset[0].image.shape[:2])
    n = len(dataset) if limit is None else min(limit, len(dataset))
    with progress() as bar:
        task = bar.add_task("every exit on the calibration frames", total=n, info="")
        cache = collect_cache(ck.net, _counted(frames_and_labels(dataset, limit), lambda: bar.advance(task)), ignore=dataset.classes.ignore_index)
    with console.status("cost tables: GFLOPs and CPU latency per exit"):
        costs = {"gflops": gflops_table(ck.net, hw), "latency_ms": latency_table(ck.net, hw, threads=threads)}
    constraint = Constraint(max_miou_drop, max_gflops, max_latency_ms, objective)
    result = search(cache, costs, setting, constraint).to_json()
    result.update(calibration={"data": data, "split": split, "frames": n}, cost_tables={k: v.to_json() for k, v in costs.items()},
                  exit_miou=per_exit_miou(cache), constraint=vars(constraint))
    if result["best"] is None:
        raise SpecError(f"no configuration meets {vars(constraint)}; the Pareto front is in --json (loosen the constraint)")
    if out_dir.resolve() != ckpt.resolve():
        shutil.copytree(ckpt, out_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("last.pt", "*.tmp"))
    set_configuration(out_dir, result, recipe_command())
    best, ref = result["best"], result["reference"]
    out.print(f"chosen: {best['config']} | calibration mIoU {100 * best['miou']:.1f} (final exit {100 * ref['miou']:.1f}), "
              f"GFLOPs {best['costs']['gflops']:.3f} (final {ref['costs']['gflops']:.3f}), latency {best['costs']['latency_ms']:.1f} ms "
              f"(final {ref['costs']['latency_ms']:.1f}); exit shares {best['exit_share']}")
    write_json(json_path, result)


@app.command("eval")
def eval_cmd(
    ckpt: Path = typer.Option(..., help="searched MESS checkpoint"),
    data: str = typer.Option(..., help="dataset spec"),
    split: str = typer.Option("val", help="data split"),
    shift: str = typer.Option("clean", help="shift to evaluate under"),
    limit: int = typer.Option(None, help="first N frames"),
    threads: int = typer.Option(1, min=1, help="torch threads (both the MESS run and the final-exit run)"),
    json_path: Path = typer.Option(None, "--json", help="write the figures here"),
) -> None:
    """The searched configuration on real frames, timed, against the final exit alone in the same run."""
    torch.set_num_threads(threads)
    dataset = open_dataset(data, split, shift)
    ck = load_mess(ckpt, expect_classes=dataset.classes)
    config = ck.configuration
    if config is None:
        raise SpecError(f"{ckpt} has no searched configuration; run `tandemseg exits search --ckpt {ckpt} ...` first")
    result = evaluate_mess(ck.net, config, dataset, limit, ck.card["mess"]["search"]["cost_tables"])
    payload = {"ckpt": str(ckpt), "data": data, "split": split, "shift": shift, "threads": threads, "configuration": config.to_json(), **result}
    keys = ("miou", "final_exit_miou", "gflops_per_frame", "final_gflops_per_frame", "latency_ms", "final_latency_ms", "frames")
    out.print(metrics_table(f"MESS {config.setting} on {data} {split} ({shift})", payload, keys))
    out.print(f"exit histogram: {payload['exit_histogram']}")
    write_json(json_path, payload)


@app.command("policies")
def policies_cmd(
    ckpt: Path = typer.Option(..., help="MESS checkpoint with trained exits (stage 2)"),
    data: str = typer.Option(..., help="dataset spec"),
    split: str = typer.Option("val", help="data split (a sweep, nothing is chosen on it)"),
    shift: list[str] = typer.Option(["clean"], help="shift(s) to compare under; repeat for several panels"),
    exits: str = typer.Option(None, help="the exit path, comma-separated (default: the cheapest head at every point)"),
    pixel_threshold: float = typer.Option(0.8, help="eq. 7's pixel threshold for the confidence policies"),
    limit: int = typer.Option(None, help="first N frames"),
    threads: int = typer.Option(1, min=1, help="torch threads"),
    json_path: Path = typer.Option(None, "--json", help="write the curves here"),
    plot: Path = typer.Option(None, help="write MESS Fig. 4's analogue (PNG) here"),
) -> None:
    """MESS Fig. 4: exit policies (eq. 7 with and without eq. 9, mean confidence, an oracle) as mIoU vs GFLOPs."""
    torch.set_num_threads(threads)
    ck = load_mess(ckpt, expect_classes=open_dataset(data, split).classes)
    path = ck.net.check_path(exits.split(",")) if exits else default_path(ck.net)
    if path[-1] != FINAL:
        path = [*path, FINAL]
    stages = [ck.net.stage_of(k) for k in path]
    runs = {}
    for s in shift:
        dataset = open_dataset(data, split, s)
        n = len(dataset) if limit is None else min(limit, len(dataset))
        with progress() as bar:
            task = bar.add_task(f"exit policies, {s}", total=n, info="")
            collected = collect_scores(ck.net, path, _counted(frames_and_labels(dataset, limit), lambda t=task: bar.advance(t)),
                                       pixel_threshold, dataset.classes.ignore_index)
        runs[s] = policy_curves(collected, path, stages, gflops_table(ck.net, tuple(dataset[0].image.shape[:2])))
        best = {name: max((p for p in pts if p["miou"] >= runs[s]["final"]["miou"] - 0.01), key=lambda p: -p["gflops"], default=None)
                for name, pts in runs[s]["curves"].items()}
        out.print(f"{s}: fewest GFLOPs within 1 pp of the final exit ({100 * runs[s]['final']['miou']:.1f}%, "
                  f"{runs[s]['final']['gflops']:.3f} GFLOPs): " + ", ".join(f"{k} {v['gflops']:.3f}" if v else f"{k} -" for k, v in best.items()))
    write_json(json_path, {"ckpt": str(ckpt), "data": data, "split": split, "pixel_threshold": pixel_threshold, "runs": runs})
    if plot:
        plot_exit_policies(runs, plot, f"exit policies on {data} {split}: {ckpt}")


def _counted(items, tick):
    for item in items:
        yield item
        tick()


def print_exit_mious(title: str, mious: dict[str, float]) -> None:
    out.print(metrics_table(title, mious, list(mious)))
