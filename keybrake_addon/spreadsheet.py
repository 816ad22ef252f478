"""CSV cells a spreadsheet shows as text, never runs as a formula.

Audit rows carry strangers' text (paths, Idempotency-Keys, labels). A spreadsheet runs a cell
starting with one of these as a formula (OWASP, CSV injection). A plain number cannot be one.
"""

import re

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
PLAIN_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def csv_cell(value):
    """The value, with a leading ' when a spreadsheet would take it for a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value
