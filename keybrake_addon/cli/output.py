"""Rendering rows as an aligned table, JSON or CSV, the same way for every command."""

import csv
import io
import json
from collections.abc import Sequence

import click

from ..spreadsheet import csv_cell
from ..text import visible

FORMATS = ("table", "json", "csv")


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


def print_json(document) -> None:
    click.echo(json.dumps(document, indent=2, default=str))
