"""The `tandemseg` command: thin wrappers that parse, call the library, print tables, write --json.

Sub-apps are attached explicitly here (no import-time registration). Errors caused by user input
(`TandemsegError`) print as one line and exit with code 2.
"""

from __future__ import annotations

import sys

import typer

from tandemseg.cli import data as data_cli
from tandemseg.cli import models as models_cli
from tandemseg.errors import TandemsegError

app = typer.Typer(help="tandemseg: edge-cloud collaborative semantic segmentation.", no_args_is_help=True, add_completion=False)
app.add_typer(data_cli.app, name="data", help="Inspect datasets and shifts: preview grids, statistics.")
app.command("train", help="Train a device or cloud segmenter.")(models_cli.train)
app.command("eval", help="Evaluate a checkpoint on a dataset split, clean or shifted.")(models_cli.eval_cmd)


def main() -> None:
    try:
        app(standalone_mode=False)
    except TandemsegError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # click usage errors arrive here with standalone_mode=False
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(2)
        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
