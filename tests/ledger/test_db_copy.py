"""`keybrake db copy --to postgresql://...`: a home's SQLite ledger moved whole into PostgreSQL.

The upgraded fixture home holds keys, settled, released, unknown and open holds, a refusal and
admin tokens; after the copy both databases must read the same through the same store.
"""

import json
import time

import psycopg
import pytest

from keybrake_addon.home import KeybrakeHome
from keybrake_addon.ledger import copying
from keybrake_addon.ledger.base import AuditFilter, LedgerUnavailable
from keybrake_addon.ledger.opening import database_of, schema_version
from keybrake_addon.ledger.postgres import PostgresLedger
from keybrake_addon.ledger.sqlite import SqliteLedger
from keybrake_addon.ledger.urls import parse_database_url

from support.postgres import fresh_database

from .homes import admit, copy_home_v3, facts, key_hash, keybrake, raw_rows, settle

TABLES = tuple(copying.TABLES)


@pytest.fixture(autouse=True)
def no_environment_overrides(monkeypatch):
    monkeypatch.delenv("KEYBRAKE_MASTER_KEY", raising=False)
    monkeypatch.delenv("KEYBRAKE_DATABASE_URL", raising=False)


@pytest.fixture
def home(tmp_path):
    made = copy_home_v3(tmp_path)
    keybrake(made, "db", "upgrade")
    return made


def reads(ledger) -> dict:
    """Everything a report or the gate reads, as one comparable document."""
    keys = ledger.list_keys()
    return {
        "keys": keys,
        "spend": {by: ledger.spend(by, AuditFilter()) for by in ("label", "key", "vendor", "day")},
        "audit": ledger.audit_rows(AuditFilter()),
        "open": {key.key_id: ledger.open_reservations(key.key_id) for key in keys},
        "secrets": ledger.list_secrets(),
        "tokens": ledger.list_admin_tokens(),
    }


def test_copy_reads_the_same_on_both_and_new_ids_do_not_collide(home, pg_url, monkeypatch):
    monkeypatch.setattr(copying, "CHUNK_ROWS", 2)  # several pages per table: the keyset paging is exercised
    counts = {table: len(raw_rows(home / "keybrake.db", table)) for table in TABLES}
    result = json.loads(keybrake(home, "db", "copy", "--to", pg_url, "--json").output)
    assert result["rows"] == counts
    assert counts["reservations"] == 5 and counts["audit"] == 6 and counts["vault_keys"] == 3

    source = SqliteLedger(home / "keybrake.db")
    copy = PostgresLedger(pg_url, where="copy")
    try:
        assert reads(copy) == reads(source)
        billing = facts()["keys"]["billing"]
        assert [r["id"] for r in copy.open_reservations(billing)] == [3, facts()["pending"]["reservation_id"]]

        # The copy's sequences start past the copied ids: a new hold takes fresh ones.
        master_key = KeybrakeHome.resolve(home).load_master_key()
        fresh = admit(copy, key_hash(master_key, billing), 5)
        assert fresh.allowed
        assert fresh.reservation_id == counts["reservations"] + 1 and fresh.audit_id == counts["audit"] + 1
        # And the open hold copied from SQLite settles on PostgreSQL.
        pending = facts()["pending"]
        settle(copy, pending["audit_id"], pending["reservation_id"], 14)
        key = copy.get_key(billing)
        assert (key.spent_micros, key.reserved_micros) == (23_500_000, 9_000_000)  # 4 unknown + 5 fresh
    finally:
        source.close()
        copy.close()


def test_copy_prints_rows_per_table(home, pg_url):
    output = keybrake(home, "db", "copy", "--to", pg_url).output
    rows = dict(line.split() for line in output.splitlines() if len(line.split()) == 2)
    assert (rows["reservations"], rows["audit"], rows["worker_tokens"]) == ("5", "6", "0")
    assert "copied" in output and "keybrake.db" in output


def test_a_target_holding_a_ledger_is_refused_and_left_alone(home, pg_url):
    keybrake(home, "db", "copy", "--to", pg_url)
    again = keybrake(home, "db", "copy", "--to", pg_url, ok=False)
    assert again.exit_code == 1 and "already holds a ledger" in again.output
    copy = PostgresLedger(pg_url, where="copy")
    try:
        assert len(copy.audit_rows(AuditFilter())) == 6
    finally:
        copy.close()


def test_a_target_with_other_tables_is_refused(home, pg_url):
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as connection:
        connection.execute("CREATE TABLE orders (id INTEGER)")
    refused = keybrake(home, "db", "copy", "--to", pg_url, ok=False)
    assert refused.exit_code == 1 and "not empty (tables: orders)" in refused.output


def test_a_target_made_by_init_with_the_same_master_key_is_accepted(home, pg_url):
    keybrake(home, "init", database=pg_url)  # the home's master key: the same check in meta
    result = json.loads(keybrake(home, "db", "copy", "--to", pg_url, "--json").output)
    assert result["rows"]["vault_keys"] == 3


def test_an_old_source_must_be_upgraded_first(tmp_path, pg_url):
    old = copy_home_v3(tmp_path)
    refused = keybrake(old, "db", "copy", "--to", pg_url, ok=False)
    assert refused.exit_code == 1 and "keybrake db upgrade" in refused.output and "source" in refused.output
    assert schema_version(parse_database_url(pg_url)) is None  # the target was never touched


def test_an_old_target_must_be_upgraded_first(home, pg_url):
    import psycopg

    keybrake(home, "init", database=pg_url)
    with psycopg.connect(pg_url, autocommit=True) as connection:
        connection.execute("UPDATE meta SET value = '3' WHERE name = 'schema_version'")
    refused = keybrake(home, "db", "copy", "--to", pg_url, ok=False)
    assert refused.exit_code == 1 and "the target" in refused.output and "db upgrade" in refused.output


def test_the_target_must_be_postgresql(home, tmp_path):
    refused = keybrake(home, "db", "copy", "--to", str(tmp_path / "other.db"), ok=False)
    assert refused.exit_code == 1 and "postgresql://" in refused.output
    assert not (tmp_path / "other.db").exists()


def test_a_missing_source_is_refused_without_creating_it(tmp_path, pg_url):
    refused = keybrake(tmp_path / "nowhere", "db", "copy", "--to", pg_url, ok=False)
    assert refused.exit_code == 1 and "nothing to copy" in refused.output
    assert not database_of(None, tmp_path / "nowhere" / "keybrake.db").path.exists()


# --- a PostgreSQL source ------------------------------------------------------------------------


@pytest.fixture
def two_databases(postgres_server):
    """A PostgreSQL ledger holding a secret (the source) and an empty database (the target)."""
    with fresh_database(postgres_server.url) as source_url, fresh_database(postgres_server.url) as target_url:
        source = PostgresLedger(source_url, where="source")
        source.put_secret("stripe", "default", b"n" * 12, b"sealed", "fp", None)
        source.close()
        yield parse_database_url(source_url), parse_database_url(target_url)


def chunks_with(monkeypatch, after_each) -> None:
    chunks = copying._chunks

    def reading_then(source, table, key):
        for rows in chunks(source, table, key):
            yield rows
            after_each(source, table)

    monkeypatch.setattr(copying, "_chunks", reading_then)


def test_a_postgresql_source_may_wait_for_a_slow_target(two_databases, monkeypatch):
    """The source's snapshot waits while the target writes each chunk: longer than the gate's
    idle bound (2 s) on a slow or distant target."""
    source, target = two_databases
    chunks_with(monkeypatch, lambda tx, table: time.sleep(2.5) if table == "secrets" else None)
    copied = copying.copy_ledger(source, target)
    assert copied["secrets"] == 1


def test_a_source_lost_at_its_end_leaves_the_target_empty(two_databases, monkeypatch):
    source, target = two_databases
    copy_table = copying._copy_table

    def copy_then_lose_the_source_after_the_last(source_tx, tx, table, key):
        copied = copy_table(source_tx, tx, table, key)
        if table == TABLES[-1]:  # every read done: only the two COMMITs are left
            pid = source_tx.row("SELECT pg_backend_pid() AS pid")["pid"]
            with psycopg.connect(target.conninfo, autocommit=True) as other:
                other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        return copied

    monkeypatch.setattr(copying, "_copy_table", copy_then_lose_the_source_after_the_last)
    with pytest.raises(LedgerUnavailable):
        copying.copy_ledger(source, target)
    assert schema_version(target) is None  # rolled back whole: the copy can be run again
