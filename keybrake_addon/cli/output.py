"""Rendering rows as an aligned table, JSON or CSV, the same way for every command."""

import csv
import io
import json
import re
from collections.abc import Sequence

import click

from ..text import visible

FORMATS = ("table", "json", "csv")

# A spreadsheet runs a cell starting with these as a formula (OWASP, CSV injection); audit rows carry
# strangers' text (paths, Idempotency-Keys, labels). A plain number cannot be a formula.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
PLAIN_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def emit(rows: Sequence[dict], columns: Sequence[str], fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps([{c: row.get(c) for c in columns} for row in rows], indent=2, default=str))
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows({c: csv_cell(row.get(c)) for c in columns} for row in rows)
        click.echo(buffer.getvalue(), nl=False)
    else:
        click.echo(table(rows, columns))


def table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return visible(str(value))


def csv_cell(value):
    """A cell a spreadsheet shows as text: one that could start a formula gets a leading '."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def print_json(document) -> None:
    click.echo(json.dumps(document, indent=2, default=str))
