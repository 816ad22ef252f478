"""Audit retention: `keybrake audit prune` deletes old rows and keeps their daily totals.

The audit table gains a row per call and the reservations table one per admitted call, for
ever. Pruning deletes the rows of whole UTC days before a cutoff and adds what `spend` counts
from them (calls, allowed, refused, cap hits, settled spend) to `daily_totals`, one row per
day, vendor and key, in the same transaction as the delete: `spend` over a pruned period
reports what it reported before, at every moment, also while a prune runs.

What is never deleted:
- an open reservation (pending, or unknown: money may have moved), or one settled at an
  estimate that `keybrake reconcile` has not corrected to its final price yet;
- the audit rows of an open reservation (a call still waiting for its settlement is one of them);
- the newest row of each table (SQLite hands out MAX(id) + 1: an id must never come back).

Rows go in chunks, each its own short transaction, so a proxy using the ledger meanwhile waits
for one chunk at most. A retry cannot reopen a pruned hold: vendors forget an Idempotency-Key
after 24 hours (decisions.IDEMPOTENCY_MEMORY) and only days at least a day old are pruned. A
chunk still locks the key rows it touches first, in key order as the gate's batches do, so a
decision reading a key's reservations never sees one half-deleted.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..vendors.base import RefusalKind
from .base import LedgerConflict
from .database import Tx, placeholders
from .times import utc_day

CHUNK_ROWS = 2000
MINIMUM_AGE = timedelta(days=1)  # and more than an Idempotency-Key lives: no retry can reopen a pruned hold
CONFLICT_RETRIES = 3
KEYLESS = ""  # daily_totals' key_id for calls made with no known key (a refusal before any key was found)
CAP_HIT_CODES = frozenset(kind.code for kind in RefusalKind if kind.is_cap_hit)
COUNTS = ("calls", "allowed", "refused", "cap_hits", "spent_micros")

# The audit rows a prune may delete (before the cutoff day; `?` is that day, as YYYY-MM-DD text).
_AUDIT_PRUNABLE = (
    "a.ts < ? AND a.id < (SELECT MAX(id) FROM audit) "
    "AND NOT EXISTS (SELECT 1 FROM reservations r WHERE r.id = a.reservation_id "
    "AND r.state IN ('pending', 'unknown'))")
# The reservations a prune may delete: closed before the cutoff day, created before it too.
_RESERVATION_PRUNABLE = (
    "r.state IN ('settled', 'released') AND r.estimated = 0 AND r.created_at < ? AND r.day < ? "
    "AND COALESCE(r.settled_at, r.created_at) < ? AND r.id < (SELECT MAX(id) FROM reservations)")


@dataclass
class PruneReport:
    before_day: str  # rows of days before this one (UTC) were pruned
    dry_run: bool
    audit_rows: int = 0
    reservations: int = 0
    days: set[str] = field(default_factory=set)  # the days whose totals were rolled up

    def document(self) -> dict:
        ordered = sorted(self.days)
        return {"before": self.before_day, "dry_run": self.dry_run, "audit_rows_deleted": self.audit_rows,
                "reservations_deleted": self.reservations, "days_rolled_up": len(ordered),
                "first_day": ordered[0] if ordered else None, "last_day": ordered[-1] if ordered else None}


def cutoff_day(now: datetime, older_than: timedelta) -> str:
    """The first day kept: the UTC day that holds `now - older_than` (whole days only are pruned)."""
    return utc_day(now - older_than)


def prune(database, older_than: timedelta, *, dry_run: bool = False) -> PruneReport:
    """Delete audit rows and closed reservations of the days before the cutoff, rolling their
    totals up. With dry_run, count what would go and change nothing."""
    if older_than < MINIMUM_AGE:
        raise ValueError(f"prune keeps at least {MINIMUM_AGE.days} day: whole UTC days before the cutoff go")
    with database.reading() as tx:
        day = cutoff_day(tx.now(), older_than)
    report = PruneReport(day, dry_run)
    if dry_run:
        with one_snapshot(database) as tx:
            _count(tx, day, report)
        return report
    for chunk in (_prune_audit_chunk, _prune_reservation_chunk):
        while _retrying(database, lambda tx: chunk(tx, database.lock_rows, day, report)) == CHUNK_ROWS:
            pass
    return report


def _retrying(database, work) -> int:
    for attempt in range(CONFLICT_RETRIES):
        try:
            with database.transaction() as tx:
                return work(tx)
        except LedgerConflict:
            if attempt == CONFLICT_RETRIES - 1:
                raise
    raise AssertionError("unreachable")


def _count(tx: Tx, day: str, report: PruneReport) -> None:
    audit = tx.rows(f"SELECT substr(a.ts, 1, 10) AS day, COUNT(*) AS n FROM audit a WHERE {_AUDIT_PRUNABLE} "
                    "GROUP BY substr(a.ts, 1, 10)", (day,))
    held = tx.rows(f"SELECT r.day, COUNT(*) AS n FROM reservations r WHERE {_RESERVATION_PRUNABLE} GROUP BY r.day",
                   (day, day, day))
    report.audit_rows = sum(int(row["n"]) for row in audit)
    report.reservations = sum(int(row["n"]) for row in held)
    report.days = {row["day"] for row in audit} | {row["day"] for row in held}


def _prune_audit_chunk(tx: Tx, lock_rows: str, day: str, report: PruneReport) -> int:
    """One chunk of audit rows: deleted, and their counts added to their day's totals."""
    candidates = tx.rows(f"SELECT a.id, a.key_id FROM audit a WHERE {_AUDIT_PRUNABLE} ORDER BY a.id "
                         f"LIMIT {CHUNK_ROWS}", (day,))
    if not candidates:
        return 0
    _lock_keys(tx, lock_rows, [row["key_id"] for row in candidates])
    ids = [row["id"] for row in candidates]
    # The conditions again, under the locks: a row that stopped qualifying meanwhile stays.
    deleted = tx.rows(f"DELETE FROM audit AS a WHERE a.id IN {placeholders(ids)} AND {_AUDIT_PRUNABLE} "
                      "RETURNING ts, key_id, label, vendor, decision", (*ids, day))
    totals: dict[tuple, dict] = {}
    for row in deleted:
        entry = _entry(totals, row["ts"][:10], row["vendor"], row["key_id"], row["label"])
        entry["calls"] += 1
        allowed = row["decision"] == "allowed"
        entry["allowed" if allowed else "refused"] += 1
        entry["cap_hits"] += row["decision"] in CAP_HIT_CODES
    _add_totals(tx, totals)
    report.audit_rows += len(deleted)
    report.days.update(key[0] for key in totals)
    return len(candidates)


def _prune_reservation_chunk(tx: Tx, lock_rows: str, day: str, report: PruneReport) -> int:
    """One chunk of closed reservations: deleted, their settled spend added to their day's totals."""
    candidates = tx.rows(f"SELECT r.id, r.key_id FROM reservations r WHERE {_RESERVATION_PRUNABLE} ORDER BY r.id "
                         f"LIMIT {CHUNK_ROWS}", (day, day, day))
    if not candidates:
        return 0
    keys = _lock_keys(tx, lock_rows, [row["key_id"] for row in candidates])
    ids = [row["id"] for row in candidates]
    deleted = tx.rows(f"DELETE FROM reservations AS r WHERE r.id IN {placeholders(ids)} AND {_RESERVATION_PRUNABLE} "
                      "RETURNING key_id, day, state, actual_micros", (*ids, day, day, day))
    totals: dict[tuple, dict] = {}
    for row in deleted:
        key = keys.get(row["key_id"])
        if key is None:
            continue  # a hold of a key that is gone: `spend` (which joins the keys) never counted it
        entry = _entry(totals, row["day"], key["vendor"], row["key_id"], key["label"])
        if row["state"] == "settled":
            entry["spent_micros"] += row["actual_micros"] or 0
    _add_totals(tx, totals)
    report.reservations += len(deleted)
    report.days.update(key[0] for key in totals)
    return len(candidates)


def _lock_keys(tx: Tx, lock_rows: str, key_ids: Sequence[str | None]) -> dict[str, dict]:
    """Lock the keys' rows in key order (as the gate's batches do); returns their vendor and label."""
    wanted = sorted({key_id for key_id in key_ids if key_id is not None})
    if not wanted:
        return {}
    rows = tx.rows(f"SELECT key_id, vendor, label FROM vault_keys WHERE key_id IN {placeholders(wanted)} "
                   f"ORDER BY key_id{lock_rows}", wanted)
    return {row["key_id"]: dict(row) for row in rows}


def _entry(totals: dict, day: str, vendor: str, key_id: str | None, label: str | None) -> dict:
    return totals.setdefault((day, vendor, key_id or KEYLESS), {"label": label, **dict.fromkeys(COUNTS, 0)})


def _add_totals(tx: Tx, totals: dict[tuple, dict]) -> None:
    if not totals:
        return
    tx.run_many(
        "INSERT INTO daily_totals (day, vendor, key_id, label, calls, allowed, refused, cap_hits, spent_micros) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (day, vendor, key_id) DO UPDATE SET "
        "label = COALESCE(daily_totals.label, excluded.label), calls = daily_totals.calls + excluded.calls, "
        "allowed = daily_totals.allowed + excluded.allowed, refused = daily_totals.refused + excluded.refused, "
        "cap_hits = daily_totals.cap_hits + excluded.cap_hits, "
        "spent_micros = daily_totals.spent_micros + excluded.spent_micros",
        [(day, vendor, key_id, entry["label"], *(entry[name] for name in COUNTS))
         for (day, vendor, key_id), entry in sorted(totals.items())])


# --- reading them back: `spend` adds these to what the remaining rows say ---------------------

_GROUPS = {"key": f"NULLIF(key_id, '{KEYLESS}')", "label": "label", "vendor": "vendor", "day": "day"}


@contextmanager
def one_snapshot(database) -> Iterator[Tx]:
    """Reads that see one state of the ledger: a prune's chunk moves counts from rows into
    daily_totals, and a report reading both must see that move whole or not at all."""
    with database.reading() as tx:
        if database.backend == "sqlite":
            tx.run("BEGIN")  # deferred: in WAL mode a snapshot that blocks no writer
            try:
                yield tx
            finally:
                tx.run("COMMIT")
        else:
            tx.run("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield tx


def rollup_since(since: datetime | None) -> str | None:
    """A rolled-up day counts whole: --since in the middle of a pruned day counts all of that day."""
    return None if since is None else utc_day(since)


def rolled_up_totals(tx: Tx, by: str, clauses: list[str], params: list) -> list[dict]:
    group = _GROUPS[by]
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    sums = ", ".join(f"CAST(SUM({name}) AS BIGINT) AS {name}" for name in COUNTS)
    return [dict(row) for row in tx.rows(f"SELECT {group} AS grp, {sums} FROM daily_totals{where} GROUP BY {group}",
                                         params)]
