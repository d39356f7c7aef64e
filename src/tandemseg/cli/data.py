"""STUB — `tandemseg data preview|stats` (helper C)."""
import typer

app = typer.Typer(no_args_is_help=True)
