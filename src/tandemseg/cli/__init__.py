"""The `tandemseg` command: thin wrappers that parse, call the library, print tables, write --json.

Sub-apps are attached explicitly here (no import-time registration). Errors caused by user input
(`TandemsegError`) print as one line and exit with code 2.
"""

from __future__ import annotations

import sys

import typer

from tandemseg.cli import adapt as adapt_cli
from tandemseg.cli import bench as bench_cli
from tandemseg.cli import codec as codec_cli
from tandemseg.cli import data as data_cli
from tandemseg.cli import demo as demo_cli
from tandemseg.cli import exits as exits_cli
from tandemseg.cli import fusion as fusion_cli
from tandemseg.cli import models as models_cli
from tandemseg.cli import offload as offload_cli
from tandemseg.cli import report as report_cli
from tandemseg.cli import service as service_cli
from tandemseg.errors import TandemsegError

app = typer.Typer(help="tandemseg: edge-cloud collaborative semantic segmentation.", no_args_is_help=True, add_completion=False)
app.add_typer(data_cli.app, name="data", help="Inspect datasets and shifts: preview grids, statistics.")
app.command("train", help="Train a device or cloud segmenter.")(models_cli.train)
app.command("eval", help="Evaluate a checkpoint on a dataset split, clean or shifted.")(models_cli.eval_cmd)
app.command("fit-uncertainty", help="Fit the ACDC uncertainty matrix U on a device model's outputs.")(offload_cli.fit_uncertainty)
app.command("collab", help="Collaborative evaluation: device + cloud on selected frames; policies, budgets, sweeps.")(offload_cli.collab)
app.add_typer(bench_cli.app, name="bench", help="Benchmark models (params, FLOPs, latency, memory), the data pipeline and payloads.")
bench_cli.app.command("payload", help="Bytes per frame on the wire: frame codecs, DCAM's device probabilities, label maps.")(service_cli.payload)
app.command("export-onnx", help="Export a checkpoint to ONNX and check parity with PyTorch.")(bench_cli.export_onnx_cmd)
app.command("adapt", help="Online adaptation on a continual stream: CEMA (cloud adapts, pushes weights) vs none, BN, Tent, upload-all.")(adapt_cli.adapt)
app.command("demo", help="Run the whole edge-cloud job on the embedded synthetic scenes.")(demo_cli.demo)
app.command("serve", help="Serve the cloud model over HTTP (FastAPI + uvicorn, or Ray Serve with --ray).")(service_cli.serve)
app.command("device", help="Stream frames through the device runtime with the HTTP link to a server.")(service_cli.device)
app.command("loadtest", help="Simulate K concurrent devices against a server: throughput, latency, errors.")(service_cli.loadtest)
app.command("rd", help="Rate-distortion on real bytes: feature codecs (JD, SD+D, float) vs image codecs into the cloud model.")(codec_cli.rd)
app.add_typer(exits_cli.app, name="exits", help="Multi-exit device networks (MESS): train stage 1/2, search a configuration, evaluate it.")
app.add_typer(codec_cli.app, name="codec", help="Feature codec (JD): train and evaluate on real range-coded bitstreams.")
app.add_typer(fusion_cli.app, name="fusion", help="Collaborative fusion (ACDC CFE): train the refinement and fusion on frozen models.")
app.add_typer(report_cli.app, name="report", help="Rebuild the Markdown tables of docs/results/ from the JSON results.")


def main() -> None:
    try:
        app(standalone_mode=False)
    except TandemsegError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.exceptions.TyperException as e:  # usage errors (typer >= 0.2x bundles its own click)
        if hasattr(e, "show"):
            e.show()
        else:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # older typer raises click's own exceptions
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(2)
        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
