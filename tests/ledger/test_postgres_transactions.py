"""How the PostgreSQL backend begins, commits and abandons a transaction (see postgres.py)."""

import psycopg
import pytest

from keybrake_addon.ledger.base import LedgerRefusedValue, LedgerUnavailable
from keybrake_addon.ledger.postgres import PostgresDatabase


@pytest.fixture
def database(pg_url):
    opened = PostgresDatabase(pg_url, where="test", create=False, check=False, pool_size=1)
    with opened.transaction() as tx:
        tx.script("CREATE TABLE t (id bigint PRIMARY KEY, n integer NOT NULL)")
    yield opened
    opened.close()


def count(database) -> int:
    with database.reading() as tx:
        return tx.row("SELECT count(*) AS n FROM t")["n"]


def test_a_batch_whose_error_was_swallowed_is_not_reported_committed(database):
    """PostgreSQL answers COMMIT in a failed transaction with ROLLBACK, and no error."""
    with pytest.raises(LedgerUnavailable, match="rolled the transaction back"):
        with database.transaction(pipelined=True) as tx:
            tx.insert_rows("t", ("id", "n"), [(1, 1)])
            try:
                tx.row("SELECT 1 / 0 AS never")
            except psycopg.Error:
                pass
    assert count(database) == 0


@pytest.mark.parametrize("pipelined", [True, False])
def test_a_refused_write_rolls_back_and_leaves_the_connection_clean(database, pipelined):
    with pytest.raises(LedgerRefusedValue):
        with database.transaction(pipelined=pipelined) as tx:
            tx.insert_rows("t", ("id", "n"), [(1, 1)])
            tx.insert_rows("t", ("id", "n"), [(2, 2**40)])  # past integer: refused at the COMMIT's round trip
    with database.transaction(pipelined=True) as tx:  # the pool's one connection, again
        tx.insert_rows("t", ("id", "n"), [(3, 3)])
    assert count(database) == 1


def test_held_writes_are_seen_by_reads_after_them(database):
    with database.transaction(pipelined=True) as tx:
        tx.insert_rows("t", ("id", "n"), [(1, 1), (2, 2)])
        tx.update_rows("t", ("n",), [(20, 2)])
        assert tx.rows("SELECT id, n FROM t ORDER BY id") == [{"id": 1, "n": 1}, {"id": 2, "n": 20}]
    assert count(database) == 2


def test_a_script_may_hold_a_percent_sign(database):
    with database.transaction() as tx:
        tx.script("COMMENT ON TABLE t IS '100% ours'")
        assert tx.row("SELECT obj_description('t'::regclass) AS comment")["comment"] == "100% ours"
