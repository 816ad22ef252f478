"""Copying a whole ledger into an empty PostgreSQL database (`keybrake db copy`).

The move from one host's SQLite file to a database replicas share. The source is read in one
snapshot; the target is written in one transaction, so a copy that fails half-way leaves the
target as empty as it was. Both must be at the latest schema: copying is not upgrading.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from . import migrations
from .database import insert_sql
from .store import SqlLedger
from .urls import DatabaseUrl

# Every table of the schema, with its primary key (the order rows are read and written in).
TABLES: dict[str, tuple[str, ...]] = {
    "meta": ("name",),
    "secrets": ("vendor", "name"),
    "budgets": ("name",),
    "vault_keys": ("key_id",),
    "reservations": ("id",),
    "audit": ("id",),
    "proxy_runs": ("run_id",),
    "issuances": ("token_id", "idempotency_key"),
    "admin_tokens": ("token_id",),
    "worker_tokens": ("token_id",),
    "daily_totals": ("day", "vendor", "key_id"),
    "dashboard_sessions": ("session_hash",),  # copied too: whoever is signed in stays signed in
    "alert_subscriptions": ("id",),
    "alert_events": ("id",),
    "alert_deliveries": ("id",),
    "alert_swept_runs": ("run_id",),
}
# Tables whose ids PostgreSQL takes from a sequence: it must start past the copied ids.
SEQUENCES = {"reservations": "reservations_id_seq", "audit": "audit_id_seq"}
# meta rows a target made by `keybrake --database URL init` already holds; equal ones are fine.
_INIT_META = ("schema_version", "master_key_check")
CHUNK_ROWS = 2000  # rows read and written at a time: a large audit table never sits in memory whole


class CopyRefused(Exception):
    """The copy cannot start (or would overwrite something); the message says what to do."""


def copy_ledger(source: DatabaseUrl, target: DatabaseUrl) -> dict[str, int]:
    """Copy every table of `source` into the empty PostgreSQL database `target`; returns rows per table."""
    if target.backend != "postgresql":
        raise CopyRefused("the copy's target must be a postgresql:// URL")
    if source.backend == "sqlite" and not source.path.exists():
        raise CopyRefused(f"no ledger at {source.path}; nothing to copy")
    from .opening import open_ledger
    from .postgres import PostgresLedger

    try:
        reader = open_ledger(source, create=False)
    except migrations.SchemaMismatch as mismatch:
        raise CopyRefused(f"the source: {mismatch}") from None
    try:
        writer = PostgresLedger(target.conninfo, where=target.redacted(), create=False, check=False)
        try:
            return _copy(reader, writer)
        finally:
            writer.close()
    finally:
        reader.close()


def _copy(reader: SqlLedger, writer: SqlLedger) -> dict[str, int]:
    copied: dict[str, int] = {}
    # The source's snapshot inside the target's transaction: should the source fail, even at its
    # own end, the target rolls back rather than having committed a copy reported as failed.
    with writer.database.transaction() as tx, _snapshot(reader) as source:
        tx.lock_schema()
        _prepare_target(tx, writer.database.where, _meta(source))
        for table, key in TABLES.items():
            copied[table] = _copy_table(source, tx, table, key)
        for table, sequence in SEQUENCES.items():
            # is_called false: the next id handed out is MAX(id) + 1 itself.
            tx.row(f"SELECT setval('{sequence}', COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false) AS next")
        for table, count in copied.items():
            found = tx.row(f"SELECT COUNT(*) AS n FROM {table}")["n"]
            # meta may hold the init rows the target had: never fewer than copied.
            if found != count and not (table == "meta" and found >= count):
                raise CopyRefused(f"{table}: copied {count} rows but the target holds {found}; nothing was kept")
    return copied


@contextmanager
def _snapshot(ledger: SqlLedger) -> Iterator:
    """One consistent read of the source, without holding up a proxy still writing to it."""
    with ledger.database.reading() as tx:
        if ledger.backend == "sqlite":
            tx.run("BEGIN")  # deferred: in WAL mode a read snapshot that blocks no writer
            try:
                yield tx
            finally:
                tx.run("COMMIT")
        else:
            tx.run("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            tx.allow_long_pauses()  # it waits for the target's writes between its reads
            yield tx


def _meta(source) -> dict[str, str]:
    return {row["name"]: row["value"] for row in source.rows("SELECT name, value FROM meta")}


def _prepare_target(tx, where: str, source_meta: dict[str, str]) -> None:
    """Give an empty target the latest schema; refuse one holding anything a copy would mix with."""
    found = migrations.schema_version(tx)
    if found is None:
        leftovers = tx.rows("SELECT table_name FROM information_schema.tables "
                            "WHERE table_schema = current_schema() ORDER BY table_name")
        if leftovers:
            names = ", ".join(row["table_name"] for row in leftovers)
            raise CopyRefused(f"{where} is not empty (tables: {names}); copy into a new, empty database")
        migrations.apply(tx, migrations.pending(None))
        return
    try:
        migrations.require_current(found, where)
    except migrations.SchemaMismatch as mismatch:
        raise CopyRefused(f"the target: {mismatch} (`keybrake --database URL db upgrade` upgrades it)") from None
    for table in TABLES:
        if table != "meta" and tx.row(f"SELECT 1 AS found FROM {table} LIMIT 1") is not None:
            raise CopyRefused(f"{where} already holds a ledger ({table} has rows); refusing to mix two ledgers. "
                              "Copy into a new, empty database")
    for row in tx.rows("SELECT name, value FROM meta"):
        if row["name"] not in _INIT_META or source_meta.get(row["name"]) != row["value"]:
            raise CopyRefused(f"{where} was set up for another ledger (meta {row['name']!r} differs); "
                              "copy into a new, empty database")


def _copy_table(source, tx, table: str, key: tuple[str, ...]) -> int:
    count = 0
    for rows in _chunks(source, table, key):
        columns = list(rows[0].keys())
        conflict = " ON CONFLICT (name) DO NOTHING" if table == "meta" else ""  # the init rows, checked equal
        tx.run_many(insert_sql(table, tuple(columns)) + conflict, [tuple(row[c] for c in columns) for row in rows])
        count += len(rows)
    return count


def _chunks(source, table: str, key: tuple[str, ...]) -> Iterator[list]:
    """The table's rows in primary key order, CHUNK_ROWS at a time (keyset paging: no OFFSET scans)."""
    order = ", ".join(key)
    after: tuple | None = None
    while True:
        where, params = "", ()
        if after is not None:
            where = f" WHERE ({order}) > ({', '.join('?' for _ in key)})"
            params = after
        rows = source.rows(f"SELECT * FROM {table}{where} ORDER BY {order} LIMIT {CHUNK_ROWS}", params)
        if not rows:
            return
        yield rows
        if len(rows) < CHUNK_ROWS:
            return
        after = tuple(rows[-1][column] for column in key)
