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
from keybrake_addon.ledger.sqlite import SqliteLedger

from .conftest import admit, settle, with_key

TABLES = ("audit", "reservations")


class CountingScans:
    """The ledger's database, reading counters of each write transaction just before it commits
    (`read`: a dict of counters from the open transaction; by default its table scans)."""

    def __init__(self, database, read=None) -> None:
        self._database = database
        self._read = read or _scans
        self.scans: list[dict[str, int]] = []

    def __getattr__(self, name):
        return getattr(self._database, name)

    @contextmanager
    def transaction(self, *, pipelined: bool = False):
        with self._database.transaction(pipelined=pipelined) as tx:
            before = self._read(tx)
            yield tx
            # The counters also hold this connection's earlier transactions not flushed yet: a difference.
            self.scans.append({name: count - before[name] for name, count in self._read(tx).items()})


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


def _fetched(tx) -> dict[str, int]:
    """The rows the transaction's index scans fetched from `reservations`. An index scan's rows are
    counted on its index, a bitmap scan's on the table: pg_stat_user_tables' idx_tup_fetch sums the two so."""
    return {"reservations": tx.row(
        "SELECT pg_stat_get_xact_tuples_fetched('reservations'::regclass) + (SELECT CAST(COALESCE(SUM("
        "pg_stat_get_xact_tuples_fetched(indexrelid)), 0) AS BIGINT) FROM pg_index "
        "WHERE indrelid = 'reservations'::regclass) AS fetched")["fetched"]}


def test_a_retry_is_found_by_its_idempotency_key_without_reading_the_keys_other_reservations(pg_url):
    """The batch finds a retry's reservation by key and Idempotency-Key, both in the unique index.
    A generic plan made while the table was small looked the key up in that index and filtered the
    Idempotency-Keys: every admit then read every reservation the key ever had (a long-lived key's
    thousands), and the server's CPU per call grew with the key's history."""
    with psycopg.connect(pg_url, autocommit=True) as connection:
        connection.execute(f"ALTER DATABASE {urlparse(pg_url).path.lstrip('/')} SET plan_cache_mode = force_generic_plan")
    ledger = PostgresLedger(pg_url, where="test", pool_size=1)  # one connection: the plans it made are the ones used
    try:
        with_key(ledger)
        for index in range(8):  # prepared (on the fifth run) while the key has a few reservations
            admission = admit(ledger, 1, idem=f"call-{index}")
            settle(ledger, admission, Resolution.SETTLE, 1, f"pi_{index}")
        with psycopg.connect(pg_url, autocommit=True) as connection:
            connection.execute(
                "INSERT INTO reservations (id, key_id, idempotency_key, endpoint, day, reserved_micros, state, "
                "attempts_open, created_at, settled_at, actual_micros) "
                "SELECT nextval('reservations_id_seq'), 'kbk_test', 'old-' || n, 'POST /v1/payment_intents', "
                "'2026-11-28', 1000000, 'settled', 0, '2026-11-28T11:00:00.000000Z', '2026-11-28T11:00:00.000000Z', "
                "1000000 FROM generate_series(1, 5000) AS n")
        counting = ledger.database = CountingScans(ledger.database, read=_fetched)
        fresh = admit(ledger, 1, idem="call-new")
        retried = admit(ledger, 1, idem="call-3")
    finally:
        ledger.close()
    assert fresh.allowed and retried.allowed and retried.reservation_id is not None
    fetched = [scans["reservations"] for scans in counting.scans]
    # The old plan read 5,008 rows for each; the retry reads its own reservation (the count works).
    assert len(fetched) == 2 and fetched[1] >= 1 and max(fetched) < 20, fetched


def test_sqlite_finds_a_retry_without_reading_the_keys_other_reservations(tmp_path):
    """SQLite's side of the test above: it keeps its unique index `(key_id, idempotency_key)`, and
    its planner (the ledger never runs ANALYZE) probes both columns. Measured in SQLite's virtual
    machine steps: an admit on a key with 5,000 more reservations costs about what it did before."""
    ledger = SqliteLedger(tmp_path / "ledger.db")
    try:
        with_key(ledger)
        for index in range(8):
            admission = admit(ledger, 1, idem=f"call-{index}")
            settle(ledger, admission, Resolution.SETTLE, 1, f"pi_{index}")
        connection = ledger.database._db  # the ledger's own connection: its statements are the ones counted
        steps = [0]

        def counted(idempotency_key: str) -> int:
            steps[0] = 0
            connection.set_progress_handler(lambda: steps.__setitem__(0, steps[0] + 1), 1)
            try:
                assert admit(ledger, 1, idem=idempotency_key).allowed
            finally:
                connection.set_progress_handler(None, 1)
            return steps[0]

        before = counted("call-3")
        connection.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) "
            "INSERT INTO reservations (id, key_id, idempotency_key, endpoint, day, reserved_micros, state, "
            "attempts_open, created_at, settled_at, actual_micros) "
            "SELECT (SELECT MAX(id) FROM reservations) + i, 'kbk_test', 'old-' || i, 'POST /v1/payment_intents', "
            "'2026-11-28', 1000000, 'settled', 0, '2026-11-28T11:00:00.000000Z', '2026-11-28T11:00:00.000000Z', "
            "1000000 FROM n")
        after = counted("call-5")
    finally:
        ledger.close()
    # Reading the key's 5,000 reservations would take tens of thousands of steps more.
    assert after < before * 1.5, (before, after)
