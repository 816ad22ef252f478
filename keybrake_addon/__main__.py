"""`python -m keybrake_addon` runs the CLI (tests use it to avoid depending on PATH)."""

from .cli.main import cli

cli()
