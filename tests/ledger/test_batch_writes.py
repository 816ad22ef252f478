"""A batch's rows written in one statement per table (`Tx.insert_rows`, `Tx.update_rows`), on both
backends: every value comes back as it went in, and a repeated id is refused rather than guessed at.

PostgreSQL sends the rows as one JSON text the server unpacks, so the values that JSON or a cast
could bend are here: quotes, backslashes, braces, "NULL" as text, non-ASCII, None, large integers
and floats.
"""

import pytest

from keybrake_addon.ledger.base import LedgerUnavailable
from keybrake_addon.ledger.postgres import PostgresDatabase
from keybrake_addon.ledger.sqlite import SqliteDatabase
from support.postgres import fresh_database

COLUMNS = ("id", "ts", "key_id", "label", "vendor", "method", "path", "status", "decision", "reserved_micros",
           "amount_minor", "duration_ms", "message")
AWKWARD_TEXT = ['it\'s "quoted"', "back\\slash\\", "{braces,and,commas}", "NULL", "", "naïve ☃ 💸", "[1, 2]",
                "\\u0041 is not A", "tab\tand\nnewline"]


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    if request.param == "sqlite":
        made = SqliteDatabase(tmp_path / "ledger.db")
    else:
        made = PostgresDatabase(request.getfixturevalue("pg_url"), where="test")
    yield made
    made.close()


def audit_row(row_id, text, **changes):
    values = dict(id=row_id, ts="2026-12-03T08:00:00.000000Z", key_id="kbk_1", label=text, vendor="stripe",
                  method="POST", path="/v1/payment_intents", status=None, decision="allowed",
                  reserved_micros=2**62 + row_id, amount_minor=-row_id, duration_ms=0.1 * row_id, message=text)
    values.update(changes)
    return tuple(values[name] for name in COLUMNS)


def read_back(database, ids):
    with database.reading() as tx:
        rows = tx.rows(f"SELECT {', '.join(COLUMNS)} FROM audit WHERE id IN ({', '.join('?' for _ in ids)}) "
                       "ORDER BY id", list(ids))
    return [tuple(row[name] for name in COLUMNS) for row in rows]


def test_inserted_rows_come_back_exactly(database):
    rows = [audit_row(i + 1, text) for i, text in enumerate(AWKWARD_TEXT)]
    rows.append(audit_row(100, None, amount_minor=None, duration_ms=None, reserved_micros=0, status=200))
    with database.transaction(pipelined=True) as tx:
        tx.insert_rows("audit", COLUMNS, rows)
    assert read_back(database, [row[0] for row in rows]) == rows


def test_update_sets_the_named_columns_and_keeps_those_asked_when_none(database):
    rows = [audit_row(i, "before") for i in (1, 2, 3)]
    with database.transaction() as tx:
        tx.insert_rows("audit", COLUMNS, rows)
    with database.transaction(pipelined=True) as tx:
        # (status, amount_minor, message, id): amount_minor is kept where None is sent; message is not.
        tx.update_rows("audit", ("status", "amount_minor", "message"),
                       [(200, None, None, 1), (402, 77, "back\\slash 'n' \"q\"", 2)],
                       keep_if_null=frozenset({"amount_minor"}))
    first, second, third = read_back(database, [1, 2, 3])
    assert first == audit_row(1, "before", status=200, message=None)  # amount_minor kept: -1
    assert second == audit_row(2, "before", status=402, amount_minor=77, message="back\\slash 'n' \"q\"")
    assert third == rows[2]  # not named: untouched


def test_a_repeated_id_is_refused_and_nothing_is_written(database):
    with database.transaction() as tx:
        tx.insert_rows("audit", COLUMNS, [audit_row(1, "before")])
    with pytest.raises(ValueError, match="an id repeats"):
        with database.transaction() as tx:
            tx.update_rows("audit", ("message",), [("first", 1), ("second", 1)])
    assert read_back(database, [1]) == [audit_row(1, "before")]


def test_a_failed_batch_write_rolls_back_the_whole_transaction(database):
    with pytest.raises(LedgerUnavailable):
        with database.transaction(pipelined=True) as tx:
            tx.insert_rows("audit", COLUMNS, [audit_row(1, "kept?")])
            tx.insert_rows("audit", COLUMNS, [audit_row(1, "the same id again")])  # the primary key refuses it
    assert read_back(database, [1]) == []


def test_postgresql_refuses_what_json_text_cannot_carry(pg_url):
    database = PostgresDatabase(pg_url, where="test")
    try:
        with pytest.raises(ValueError, match="does not travel as JSON text"):
            with database.transaction() as tx:  # bytea: its text form is an escape format, not the bytes
                tx.insert_rows("secrets", ("vendor", "name", "nonce"), [("stripe", "x", b"\x00\x01")])
        with pytest.raises(ValueError, match="not a plain SQL identifier"):
            with database.transaction() as tx:
                tx.insert_rows("audit; DROP TABLE audit", ("id",), [(1,)])
        with pytest.raises(ValueError, match="has no column"):
            with database.transaction() as tx:
                tx.insert_rows("audit", ("id", "no_such_column"), [(1, 2)])
        with pytest.raises(ValueError):  # NaN is not JSON, and no price is NaN
            with database.transaction() as tx:
                tx.insert_rows("audit", COLUMNS, [audit_row(1, "x", duration_ms=float("nan"))])
    finally:
        database.close()


def test_one_of_finds_exactly_the_rows_named(database):
    rows = [audit_row(i + 1, text, key_id=f"kbk_{i % 3}") for i, text in enumerate(AWKWARD_TEXT)]
    with database.transaction() as tx:
        tx.insert_rows("audit", COLUMNS, rows)
    with database.reading() as tx:
        def ids_where(condition, params):
            return sorted(row["id"] for row in tx.rows(f"SELECT id FROM audit WHERE {condition}", params))

        assert ids_where(*tx.one_of("id", [2, 5, 5, 999])) == [2, 5]
        assert ids_where(*tx.one_of("label", ["NULL", "back\\slash\\", "not there"])) == [2, 4]
        assert ids_where(*tx.one_of("id", [])) == []


def test_a_row_of_the_wrong_width_is_refused_on_both_backends(database):
    with database.transaction() as tx:
        tx.insert_rows("audit", COLUMNS, [audit_row(1, "before")])
    for write in (lambda tx: tx.insert_rows("audit", COLUMNS, [audit_row(2, "x")[:-1]]),
                  lambda tx: tx.update_rows("audit", ("status", "message"), [(200, 1)])):  # its id read as a value
        with pytest.raises(Exception) as refused:
            with database.transaction() as tx:
                write(tx)
        assert isinstance(refused.value, (ValueError, LedgerUnavailable)), refused.value
    assert read_back(database, [1, 2]) == [audit_row(1, "before")]


def test_postgresql_in_another_encoding_gets_the_text_it_can_hold(postgres_server):
    """A LATIN1 database stores "naïve" through the JSON text as it did value by value: the server
    turns each character, sent as a \\u escape, into its own encoding (PostgreSQL 13 and later)."""
    with fresh_database(postgres_server.url, encoding="LATIN1") as url:
        database = PostgresDatabase(url, where="test")
        try:
            rows = [audit_row(1, "naïve café"), audit_row(2, "plain")]
            with database.transaction(pipelined=True) as tx:
                tx.insert_rows("audit", COLUMNS, rows)
            with database.transaction(pipelined=True) as tx:
                tx.update_rows("audit", ("message",), [("über", 2)])
            assert read_back(database, [1, 2]) == [rows[0], audit_row(2, "plain", message="über")]
        finally:
            database.close()


SEQ_SCANS_OF_AUDIT = "SELECT pg_stat_get_xact_numscans('audit'::regclass) AS scans"


def test_postgresql_batch_statements_find_their_rows_by_index_not_by_scanning_the_table(pg_url):
    # The planner takes json_array_elements for 100 rows, so an UPDATE joined to it alone read the
    # whole table on every batch (a settlement batch scanned every audit row ever written).
    database = PostgresDatabase(pg_url, where="test")
    try:
        with database.transaction() as tx:
            tx.insert_rows("audit", COLUMNS, [audit_row(i, "row") for i in range(1, 5001)])
        with database.transaction() as tx:
            tx.run("ANALYZE audit", [])
        for attempt in range(8):  # psycopg prepares a statement on its 5th run: the generic plan too
            with database.transaction(pipelined=True) as tx:
                # Read before and after: on PostgreSQL 15 the counter also holds earlier transactions
                # of this connection whose statistics are not flushed yet.
                before = tx.rows(SEQ_SCANS_OF_AUDIT, [])[0]["scans"]
                tx.update_rows("audit", ("status", "message"), [(200, f"try {attempt}", 7), (201, "x", 4242)])
                where, params = tx.one_of("id", [7, 4242])
                assert len(tx.rows(f"SELECT id FROM audit WHERE {where}", params)) == 2
                after = tx.rows(SEQ_SCANS_OF_AUDIT, [])[0]["scans"]
            assert after - before == 0, f"run {attempt + 1} scanned the audit table"
    finally:
        database.close()


def test_a_query_given_as_none_reads_nothing_and_keeps_its_place(database):
    with database.transaction(pipelined=True) as tx:
        tx.insert_rows("audit", COLUMNS, [audit_row(7, "seven")])
        now, (first, nothing, last) = tx.now_and_rows(
            [("SELECT id FROM audit WHERE id = ?", (7,)), None, ("SELECT COUNT(*) AS n FROM audit", ())], clock_after=1)
    assert ([row["id"] for row in first], nothing, last[0]["n"]) == ([7], [], 1)
    assert now.tzinfo is not None


class CountingStatements:
    """A psycopg connection that counts the statements sent through it."""

    def __init__(self, connection) -> None:
        self._connection, self.sent = connection, []

    def __getattr__(self, name):
        return getattr(self._connection, name)

    def execute(self, sql, params=()):
        self.sent.append(sql)
        return self._connection.execute(sql, params)


def test_postgresql_ids_asked_ahead_come_with_the_clock_in_one_statement(pg_url):
    database = PostgresDatabase(pg_url, where="test")
    try:
        with database.transaction(pipelined=True) as tx:
            counting = tx._connection = CountingStatements(tx._connection)
            tx.prefetch_ids({"audit": 3, "reservations": 1})
            now, _ = tx.now_and_rows([None], clock_after=1)
            ids = tx.new_ids({"audit": 2, "reservations": 1})
        assert len(counting.sent) == 1 and "clock_timestamp()" in counting.sent[0], counting.sent
        assert (len(ids["audit"]), len(ids["reservations"])) == (2, 1)
    finally:
        database.close()


def test_postgresql_prefetched_ids_are_fresh_and_as_many_as_asked(pg_url):
    database = PostgresDatabase(pg_url, where="test")
    try:
        with database.transaction(pipelined=True) as tx:
            first = tx.new_ids({"audit": 2, "reservations": 1})
            tx.prefetch_ids({"audit": 5, "reservations": 3})
            second = tx.new_ids({"audit": 4, "reservations": 0})
            tx.prefetch_ids({"audit": 1})
            third = tx.new_ids({"audit": 2})  # more than was prefetched: drawn anew
        assert (len(second["audit"]), second["reservations"], len(third["audit"])) == (4, [], 2)
        drawn = first["audit"] + second["audit"] + third["audit"]
        assert len(set(drawn)) == len(drawn), drawn
    finally:
        database.close()
