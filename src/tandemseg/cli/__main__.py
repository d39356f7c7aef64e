"""`python -m tandemseg.cli` runs the CLI."""

from tandemseg.cli import main

main()
