"""PostgreSQL's plans for the ledger's batches find rows by index, whatever the tables held when
the plans were made.

psycopg prepares a statement on its fifth run, and the server may keep the generic plan it makes
then until something invalidates it. Made while the tables were nearly empty (a new installation,
a benchmark), such plans scanned `audit` and `reservations` on every batch, so each admit and
settlement read every row written before it: a bench run of 6,200 calls read 1,100 rows per call,
and the server's CPU per call doubled. `plan_cache_mode = force_generic_plan` makes every plan
the generic one from the start, so the test does not depend on when the server would switch.
"""

from contextlib import contextmanager
from urllib.parse import urlparse

import psycopg

from keybrake_addon.ledger.base import Resolution
from keybrake_addon.ledger.postgres import PostgresLedger

from .conftest import admit, settle, with_key

TABLES = ("audit", "reservations")


class CountingScans:
    """The ledger's database, reading each write transaction's table scans just before it commits."""

    def __init__(self, database) -> None:
        self._database = database
        self.scans: list[dict[str, int]] = []

    def __getattr__(self, name):
        return getattr(self._database, name)

    @contextmanager
    def transaction(self, *, pipelined: bool = False):
        with self._database.transaction(pipelined=pipelined) as tx:
            before = _scans(tx)
            yield tx
            # The counters also hold this connection's earlier transactions not flushed yet: a difference.
            self.scans.append({table: count - before[table] for table, count in _scans(tx).items()})


def _scans(tx) -> dict[str, int]:
    row = tx.row("SELECT " + ", ".join(f"pg_stat_get_xact_numscans('{t}'::regclass) AS {t}" for t in TABLES))
    return {table: row[table] for table in TABLES}


def test_admits_and_settlements_never_scan_the_audit_or_reservations_table(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as connection:
        connection.execute(f"ALTER DATABASE {urlparse(pg_url).path.lstrip('/')} SET plan_cache_mode = force_generic_plan")
    ledger = PostgresLedger(pg_url, where="test")
    try:
        with_key(ledger)
        counting = ledger.database = CountingScans(ledger.database)
        for index in range(12):
            admission = admit(ledger, 1, idem=f"call-{index}")
            settle(ledger, admission, Resolution.SETTLE, 1, f"pi_{index}")
        retried = admit(ledger, 1, idem="call-3")  # a retry: found by its Idempotency-Key
        assert retried.allowed
    finally:
        ledger.close()
    assert len(counting.scans) >= 25
    assert [scans for scans in counting.scans if any(scans.values())] == []


def test_each_batch_statement_is_planned_once_per_connection(pg_url):
    """With seq scans off, the server finds a generic plan dearer than a custom one and would plan
    the lock query again at each batch (half a millisecond of the server's CPU on a slow machine):
    the batch asks for the generic plan, made once per prepared statement."""
    ledger = PostgresLedger(pg_url, where="test", pool_size=1)  # one connection: its prepared statements are all of them
    try:
        with_key(ledger)
        for index in range(12):
            admission = admit(ledger, 1, idem=f"call-{index}")
            settle(ledger, admission, Resolution.SETTLE, 1, f"pi_{index}")
        with ledger.database.reading() as tx:
            prepared = tx.rows("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")
    finally:
        ledger.close()
    locks = [row for row in prepared if "FOR UPDATE" in row["statement"]]
    assert locks and all(row["generic_plans"] >= 1 for row in locks), prepared
    assert [row["statement"][:60] for row in prepared if row["custom_plans"]] == []
