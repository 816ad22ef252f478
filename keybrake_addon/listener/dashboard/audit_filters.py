"""The audit page's filters, read from a query string, and its CSV export.

Filters come from strangers' URLs, so each is bounded and checked; a bad one becomes a message
on the page, never an error page. The CSV has the CLI's columns (`keybrake audit --format csv`)
and neutralises cells a spreadsheet would run as formulas, as the CLI does.
"""

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlencode

from ...ledger.dashboard_reads import AuditCursor, AuditQuery
from ...spreadsheet import csv_cell
from ...vendors.base import RefusalKind
from ...views import audit_document

# The same columns, in the same order, as `keybrake audit --format csv` (tests hold them equal).
CSV_COLUMNS = ["ts", "key_id", "label", "vendor", "method", "path", "status", "decision", "outcome",
               "reserved_usd", "actual_usd", "amount_minor", "currency", "object_id", "idempotency_key",
               "vendor_request_id", "duration_ms", "id"]  # as `keybrake audit --format csv`
MAX_FILTER_CHARS = 512

# What the decision filter offers: groups first, then each decision the ledger writes.
DECISIONS = [("allowed", "allowed"), ("refused", "any refusal"), ("cap_hit", "cap hits"),
             ("reconciled", "reconciled by hand")] + [(kind.code, kind.code.removeprefix("keybrake_").replace("_", " "))
                                                      for kind in RefusalKind]
_DECISION_CODES = {code for code, _ in DECISIONS}


@dataclass
class AuditFilters:
    query: AuditQuery
    after: AuditCursor | None
    values: dict[str, str]  # what the form shows back
    errors: list[str] = field(default_factory=list)

    def link(self, **changes: str | None) -> str:
        """This page's query string with some values changed (None drops one)."""
        values = {**self.values, **changes}
        return urlencode({name: value for name, value in values.items() if value})


def parse_filters(params) -> AuditFilters:
    values = {name: str(params.get(name, ""))[:MAX_FILTER_CHARS].strip()
              for name in ("label", "key", "vendor", "decision", "since", "until")}
    errors = []
    decision = values["decision"] or None
    if decision is not None and decision not in _DECISION_CODES:
        errors.append(f"unknown decision {decision!r}: pick one from the list")
        decision = values["decision"] = None
    since, until = _moment(values, "since", errors), _moment(values, "until", errors)
    after = None
    if raw := str(params.get("after", ""))[:100]:
        after = AuditCursor.parse(raw)
        if after is None:
            errors.append("that page link is broken; showing the newest rows")
    query = AuditQuery(label=values["label"] or None, key_id=values["key"] or None, vendor=values["vendor"] or None,
                       decision=decision, since=since, until=until)
    return AuditFilters(query, after, values, errors)


def _moment(values: dict[str, str], name: str, errors: list[str]) -> datetime | None:
    """A time the form gave (datetime-local, read as UTC) or an ISO 8601 time."""
    text = values[name]
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        errors.append(f"{name}: {text!r} is not a time; use 2026-12-02T14:00 (UTC)")
        values[name] = ""
        return None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    values[name] = moment.strftime("%Y-%m-%dT%H:%M:%S")  # what a datetime-local field shows
    return moment


def csv_header() -> str:
    return _csv_lines([dict(zip(CSV_COLUMNS, CSV_COLUMNS))])


def csv_rows(rows: Iterable[dict]) -> str:
    return _csv_lines(audit_document(row) for row in rows)


def _csv_lines(documents: Iterable[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writerows({c: csv_cell(document.get(c)) for c in CSV_COLUMNS} for document in documents)
    return buffer.getvalue()
