"""`keybrake audit`: the audit trail, newest or oldest first, followed as it grows, and pruned."""

import csv
import io
import json
import os
import sys
import time

import click

from ..durations import InvalidDuration, parse_duration
from ..ledger.base import AuditFilter, LedgerUnavailable
from ..views import audit_document
from .context import installation
from .following import Follower
from .output import FORMATS, cell, csv_cell, emit, print_json
from .reports import since_option

AUDIT_COLUMNS = ["ts", "key_id", "label", "vendor", "method", "path", "status", "decision", "outcome",
                 "reserved_usd", "actual_usd", "amount_minor", "currency", "object_id", "idempotency_key",
                 "vendor_request_id", "duration_ms", "id"]  # id last: CSV readers may count columns
AUDIT_TABLE_COLUMNS = ["ts", "key_id", "label", "method", "path", "status", "decision", "reserved_usd",
                       "actual_usd", "object_id"]
FOLLOW_FIRST_ROWS = 10  # like tail -f: the last few rows first
# Following, a table's columns cannot be sized to rows not written yet: these widths, wider values overflow.
FOLLOW_WIDTHS = {"ts": 27, "key_id": 24, "label": 20, "method": 6, "path": 28, "status": 6, "decision": 12,
                 "reserved_usd": 12, "actual_usd": 10, "object_id": 0}
DEFAULT_POLL_S = 1.0


@click.group(invoke_without_command=True)
@click.option("--label", help="Only calls made with keys of this run label.")
@click.option("--label-prefix", metavar="PREFIX",
              help="Only calls of labels starting with PREFIX (taken literally: % and _ are not wildcards), "
                   "e.g. trigger.dev/billing-agent/ for every run of that task.")
@click.option("--key", "key_id", help="Only calls made with this key_id.")
@since_option
@click.option("--limit", type=click.IntRange(1),
              help=f"At most this many rows: the newest or the oldest, as --order says "
                   f"(with --follow: the last {FOLLOW_FIRST_ROWS} unless given).")
@click.option("--order", type=click.Choice(["newest", "oldest"]),
              help="newest first or oldest first. Default: newest at a terminal, oldest in a pipe or file "
                   "(so scripts read the trail in the order it happened); --follow prints oldest first.")
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing rows as they are written, like tail -f (Ctrl-C stops). With --json, one "
                   "JSON object per line.")
@click.option("--poll-interval", type=click.FloatRange(0.05), default=DEFAULT_POLL_S, show_default=True,
              metavar="SECONDS", help="With --follow: how often to look for new rows.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="The same as --format json.")
@click.pass_context
def audit(ctx: click.Context, label, label_prefix, key_id, since, limit, order, follow, poll_interval, fmt,
          as_json) -> None:
    """Print the audit trail: one row per call, refused ones included.

    `keybrake audit prune` deletes old rows and keeps their daily totals (see its --help).
    """
    if ctx.invoked_subcommand is not None:
        if any(value not in (None, False) for name, value in ctx.params.items()
               if name not in ("fmt", "poll_interval")):
            raise click.UsageError(f"put options after `{ctx.invoked_subcommand}`: they are its own")
        return
    fmt = "json" if as_json else fmt
    if follow and order == "newest":
        raise click.UsageError("--follow prints rows as they happen, oldest first: drop --order newest")
    newest_first = not follow and (order == "newest" or (order is None and sys.stdout.isatty()))
    where = AuditFilter(label=label, label_prefix=label_prefix, key_id=key_id, since=since, limit=limit,
                        newest_first=newest_first)
    if follow:
        _follow(ctx, where, fmt, poll_interval)
        return
    with installation(ctx) as kb:
        rows = kb.ledger.audit_rows(where)
    emit([audit_document(row) for row in rows], AUDIT_TABLE_COLUMNS if fmt == "table" else AUDIT_COLUMNS, fmt)


def _follow(ctx: click.Context, where: AuditFilter, fmt: str, poll_s: float) -> None:
    printer = _FollowPrinter(fmt)
    try:
        with installation(ctx) as kb:
            ledger = kb.ledger
            newest = ledger.audit_rows(AuditFilter(limit=1, newest_first=True))
            follower = Follower(newest[0]["id"] if newest else 0)
            last = ledger.audit_rows(AuditFilter(limit=where.limit or FOLLOW_FIRST_ROWS, newest_first=True,
                                                 label=where.label, label_prefix=where.label_prefix,
                                                 key_id=where.key_id, since=where.since))
            # A row written since `newest` was read comes with the first poll, once.
            printer.rows(sorted((row for row in last if row["id"] <= follower.last_id), key=lambda row: row["id"]))
            unavailable = False
            while True:
                time.sleep(poll_s)
                after_id, also_ids = follower.wanted()
                try:
                    rows = ledger.audit_rows(AuditFilter(
                        label=where.label, label_prefix=where.label_prefix, key_id=where.key_id, since=where.since,
                        after_id=after_id, also_ids=also_ids))
                except LedgerUnavailable as error:  # a restart of the database must not end the watch
                    if not unavailable:
                        click.echo(f"keybrake audit: {error}; still trying", err=True)
                    unavailable = True
                    continue
                if unavailable:
                    click.echo("keybrake audit: the ledger answers again", err=True)
                    unavailable = False
                printer.rows(follower.take(rows))
    except KeyboardInterrupt:
        ctx.exit(0)  # Ctrl-C is how a follow ends: not an error
    except BrokenPipeError:  # `... | head`: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        ctx.exit(0)


class _FollowPrinter:
    """Rows as they arrive: a table's header once, CSV's header once, JSON one object per line."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.columns = AUDIT_TABLE_COLUMNS if fmt == "table" else AUDIT_COLUMNS
        self._header_done = False

    def rows(self, rows) -> None:
        documents = [audit_document(row) for row in rows]
        if self.fmt == "json":
            for document in documents:
                click.echo(json.dumps({c: document.get(c) for c in self.columns}, default=str))
        elif self.fmt == "csv":
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=self.columns, extrasaction="ignore")
            if not self._header_done:
                writer.writeheader()
            writer.writerows({c: csv_cell(document.get(c)) for c in self.columns} for document in documents)
            click.echo(buffer.getvalue(), nl=False)
        else:
            if not self._header_done:
                click.echo(self._line({c: c for c in self.columns}, str))
                click.echo(self._line({c: "-" * max(len(c), FOLLOW_WIDTHS[c]) for c in self.columns}, str))
            for document in documents:
                click.echo(self._line(document, cell))
        self._header_done = True
        sys.stdout.flush()

    def _line(self, values: dict, show) -> str:
        return "  ".join(show(values.get(c)).ljust(max(len(c), FOLLOW_WIDTHS[c])) for c in self.columns).rstrip()


@audit.command()
@click.option("--older-than", "older_than", required=True, metavar="DURATION",
              help="Prune the days before the UTC day this long ago, e.g. 90d (at least 1d).")
@click.option("--dry-run", is_flag=True, help="Count what would be pruned; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def prune(ctx: click.Context, older_than: str, dry_run: bool, as_json: bool) -> None:
    """Delete old audit rows and closed (settled or released) reservations, keeping their daily totals.

    Whole UTC days before the cutoff are pruned. What `keybrake spend` counts from them (calls,
    allowed, refused, cap hits, settled spend) is rolled up per day, vendor and key first, in the
    same transaction: spend over a pruned period reports the same totals as before. Never deleted:
    open or unknown reservations and their audit rows, and reservations settled at an estimate
    that `keybrake reconcile` (final Twilio prices) has not corrected. Safe while proxies run: rows go in
    small transactions.
    """
    from ..ledger.retention import prune as prune_ledger

    try:
        age = parse_duration(older_than)
    except InvalidDuration as failure:
        raise click.BadParameter(str(failure), param_hint="--older-than") from None
    if age.days < 1:
        raise click.BadParameter("at least 1d: whole UTC days are pruned", param_hint="--older-than")
    with installation(ctx) as kb:
        report = prune_ledger(kb.ledger.database, age, dry_run=dry_run)
    document = report.document()
    if as_json:
        print_json(document)
        return
    days = document["days_rolled_up"]
    span = f" ({document['first_day']} to {document['last_day']})" if days else ""
    click.echo(f"{'Would delete' if dry_run else 'Deleted'} {_count(document['audit_rows_deleted'], 'audit row')} "
               f"and {_count(document['reservations_deleted'], 'closed reservation')} from before "
               f"{document['before']} (UTC); {_count(days, 'day')}{span} {'would be' if dry_run else 'were'} "
               "rolled up into daily totals, which `keybrake spend` keeps counting.")
    if dry_run:
        click.echo("Nothing was changed (--dry-run).")


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


COMMANDS = (audit,)
