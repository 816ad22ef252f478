"""Commands that read the audit trail: audit, spend."""

from datetime import datetime

import click

from ..ledger.base import AuditFilter
from ..views import audit_document, spend_document
from ..durations import parse_since
from .context import installation
from .output import FORMATS, emit

AUDIT_COLUMNS = ["ts", "key_id", "label", "vendor", "method", "path", "status", "decision", "outcome",
                 "reserved_usd", "actual_usd", "amount_minor", "currency", "object_id", "idempotency_key",
                 "vendor_request_id", "duration_ms"]
AUDIT_TABLE_COLUMNS = ["ts", "key_id", "label", "method", "path", "status", "decision", "reserved_usd",
                       "actual_usd", "object_id"]


def _since(_ctx, param, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_since(value)
    except ValueError as failure:
        raise click.BadParameter(str(failure), param=param) from None


@click.command()
@click.option("--label", help="Only calls made with keys of this run label.")
@click.option("--key", "key_id", help="Only calls made with this key_id.")
@click.option("--since", callback=_since, help="Only calls since an ISO time or a duration ago (2h, 1d).")
@click.option("--limit", type=click.IntRange(1), help="At most this many rows (oldest first).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.pass_context
def audit(ctx: click.Context, label, key_id, since, limit, fmt) -> None:
    """Print the audit trail: one row per call, refused ones included."""
    with installation(ctx) as kb:
        rows = kb.ledger.audit_rows(AuditFilter(label=label, key_id=key_id, since=since, limit=limit))
    emit([audit_document(row) for row in rows], AUDIT_TABLE_COLUMNS if fmt == "table" else AUDIT_COLUMNS, fmt)


@click.command()
@click.option("--label", help="Only keys of this run label.")
@click.option("--by", type=click.Choice(["key", "label", "vendor", "day", "budget"]), default="label",
              show_default=True, help="How to group the totals. By budget, each budget's include its children's.")
@click.option("--since", callback=_since, help="Only calls since an ISO time or a duration ago (2h, 1d).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def spend(ctx: click.Context, label, by, since, fmt) -> None:
    """Print spend totals: settled spend, open reservations, calls, refusals and cap hits."""
    with installation(ctx) as kb:
        rows = kb.ledger.spend(by, AuditFilter(label=label, since=since))
    emit([spend_document(row) for row in rows], [by, "spent_usd", "reserved_usd", "calls", "allowed", "refused", "cap_hits"], fmt)


COMMANDS = (audit, spend)
