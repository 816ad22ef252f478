"""Operator output is inert: CSV cells a spreadsheet would run, control characters a terminal would act on."""

import csv
import io
import json

import pytest

from keybrake_addon.cli.output import emit
from keybrake_addon.text import has_control_characters, visible

HOSTILE = {"path": "/v1/charges\x1b[2J\x1b]0;owned\x07", "idempotency_key": "=HYPERLINK(\"http://evil\")",
           "label": "run\r\nforged row", "amount": "-12.50", "note": "\x9b31m"}
COLUMNS = list(HOSTILE)


def emitted(capsys, fmt: str) -> str:
    emit([HOSTILE], COLUMNS, fmt)
    return capsys.readouterr().out


@pytest.mark.parametrize("value", ["=1+1", "+1", "-1+cmd|' /C calc'!A0", "@SUM(A1)", "\tx", "\rx"])
def test_csv_cells_that_would_start_a_formula_are_quoted(capsys, value):
    emit([{"idempotency_key": value}], ["idempotency_key"], "csv")
    (row,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert row["idempotency_key"] == "'" + value


def test_csv_keeps_plain_numbers_and_ordinary_text(capsys):
    emit([{"a": "-12.50", "b": "run-1", "c": 5, "d": None}], ["a", "b", "c", "d"], "csv")
    (row,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert row == {"a": "-12.50", "b": "run-1", "c": "5", "d": ""}


def test_table_output_shows_control_characters_as_escapes(capsys):
    out = emitted(capsys, "table")
    assert not has_control_characters(out.replace("\n", ""))
    assert out.count("\n") == 3  # header, rule, one row: no forged line
    assert "\\x1b[2J" in out and "\\x07" in out and "run\\x0d\\x0aforged row" in out and "\\x9b31m" in out


def test_json_output_stays_exact(capsys):
    assert json.loads(emitted(capsys, "json")) == [HOSTILE]


def test_visible_leaves_printable_text_alone():
    assert visible("trigger.dev/billing-agent/run_1 é ✓") == "trigger.dev/billing-agent/run_1 é ✓"
