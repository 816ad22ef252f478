"""A home written before migrations existed (tests/fixtures/home-v3, schema 3) upgrades in place.

Nothing may be lost: keys with their caps and money, the secret (still opened by the home's
master key), the open hold (still counted, and still settles), the audit trail, admin tokens.
"""

import json
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from keybrake_addon.home import KeybrakeHome
from keybrake_addon.installation import open_installation
from keybrake_addon.ledger import migrations
from keybrake_addon.ledger.base import AuditFilter, IssuanceIdempotency, LedgerUnavailable
from keybrake_addon.ledger.opening import database_of, open_ledger, schema_version
from keybrake_addon.ledger.postgres import POOL_SIZE, PostgresDatabase
from keybrake_addon.ledger.times import to_text
from keybrake_addon.ledger.urls import DatabaseUrl, parse_database_url

from .homes import USD, admit, copy_home_v3, facts, key_hash, keybrake, raw_rows, settle

REPO = Path(__file__).resolve().parents[2]
TABLES = ("meta", "secrets", "vault_keys", "reservations", "audit", "proxy_runs", "issuances", "admin_tokens")


@pytest.fixture(autouse=True)
def no_environment_overrides(monkeypatch):
    monkeypatch.delenv("KEYBRAKE_MASTER_KEY", raising=False)
    monkeypatch.delenv("KEYBRAKE_DATABASE_URL", raising=False)


@pytest.fixture
def home(tmp_path) -> Path:
    return copy_home_v3(tmp_path)


def test_the_fixture_was_written_by_the_old_schema(home):
    assert schema_version(database_of(None, home / "keybrake.db")) == 3
    columns = {row["name"] for row in _columns(home / "keybrake.db", "reservations")}
    assert "attempts_open" not in columns


def test_opening_an_old_home_refuses_and_names_the_upgrade(home):
    with pytest.raises(migrations.SchemaMismatch) as refused:
        open_ledger(database_of(None, home / "keybrake.db"))
    message = str(refused.value)
    assert "schema version 3" in message and f"reads version {migrations.LATEST}" in message
    assert "keybrake db upgrade" in message
    result = keybrake(home, "keys", "list", ok=False)
    assert result.exit_code == 1 and "keybrake db upgrade" in result.output


def test_the_proxy_refuses_to_start_on_an_old_home(home):
    # A subprocess with a timeout: a proxy that wrongly started would otherwise never return.
    done = subprocess.run([sys.executable, "-m", "keybrake_addon", "--home", str(home), "proxy", "--listen-port", "0"],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "keybrake db upgrade" in done.stderr and "schema version 3" in done.stderr


def test_status_lists_the_pending_migration(home):
    result = keybrake(home, "db", "status", "--json", ok=False)
    assert result.exit_code == 1
    status = json.loads(result.output)
    assert (status["version"], status["latest"]) == (3, migrations.LATEST)
    assert [(m["version"], m["state"]) for m in status["migrations"]] == [
        (3, "applied"), *((m.version, "pending") for m in migrations.MIGRATIONS if m.version > 3)]
    text = keybrake(home, "db", "status", ok=False).output
    assert "4        pending" in text


def test_upgrade_keeps_every_row(home):
    database = home / "keybrake.db"
    before = {table: raw_rows(database, table) for table in TABLES}
    applied = json.loads(keybrake(home, "db", "upgrade", "--json").output)
    assert applied == {"database": str(database), "applied": [m.version for m in migrations.MIGRATIONS if m.version > 3],
                       "version": migrations.LATEST}
    after = {table: raw_rows(database, table) for table in TABLES}
    for table in TABLES:
        if table in ("meta", "reservations", "vault_keys", "admin_tokens", "issuances"):
            continue
        assert after[table] == before[table], table
    # Version 6: every old admin token is unrestricted (no scope), no old key names a minting
    # token, and the old issuance record is kept, answering unrestricted tokens only.
    for table, added, value in (("admin_tokens", "scope", None), ("vault_keys", "minted_by", None),
                                ("issuances", "token_id", "unattributed")):
        assert [r[added] for r in after[table]] == [value] * len(before[table]), table
        new_columns = {added, "budget", "stripe_account"}  # the keys also gained their budget and Connect account
        assert [{k: v for k, v in r.items() if k not in new_columns} for r in after[table]] == before[table], table
    assert len(after["issuances"]) == 1
    # The keys gained a budget column, empty: every key spends from no budget, as before.
    assert {r["budget"] for r in after["vault_keys"]} == {None}
    assert raw_rows(database, "budgets") == []
    # The keys gained the Connect account they act for: none, for every key made before.
    assert {r["stripe_account"] for r in after["vault_keys"]} == {None}
    assert {r["name"]: r["value"] for r in after["meta"]} == {
        **{r["name"]: r["value"] for r in before["meta"]}, "schema_version": str(migrations.LATEST)}
    # The reservations gained their attempt counters; every other column is as it was.
    assert [{k: v for k, v in r.items() if k not in ("attempts_open", "released_attempts")}
            for r in after["reservations"]] == before["reservations"]
    pending_id = facts()["pending"]["reservation_id"]
    assert {r["id"]: (r["state"], r["attempts_open"], r["released_attempts"]) for r in after["reservations"]} == {
        r["id"]: (r["state"], 1 if r["id"] == pending_id else 0, 0) for r in before["reservations"]}
    assert before["reservations"][pending_id - 1]["state"] == "pending"


def test_after_upgrade_keys_secret_holds_audit_and_tokens_read_as_before(home):
    known = facts()
    keys_before = {r["key_id"]: r for r in raw_rows(home / "keybrake.db", "vault_keys")}
    audit_before = raw_rows(home / "keybrake.db", "audit")
    keybrake(home, "db", "upgrade")
    kb = open_installation(KeybrakeHome.resolve(home))
    try:
        ledger = kb.ledger
        keys = {key.key_id: key for key in ledger.list_keys()}
        assert set(keys) == set(keys_before) == {*known["keys"].values(), known["issued_with_idempotency"]}
        for key_id, raw in keys_before.items():
            key = keys[key_id]
            assert (key.spec.label, key.spec.daily_cap_micros, key.spec.total_cap_micros, key.spec.max_calls) == (
                raw["label"], raw["daily_cap_micros"], raw["total_cap_micros"], raw["max_calls"])
            assert (key.spent_micros, key.reserved_micros, key.calls) == (
                raw["spent_micros"], raw["reserved_micros"], raw["calls"])
        billing = keys[known["keys"]["billing"]]
        # Settled 9.50; held: 4 unknown + 15 still pending from a proxy run that stopped.
        assert (billing.spent_micros, billing.reserved_micros) == (int(9.5 * USD), 19 * USD)
        assert (billing.spec.total_cap_micros, billing.spec.daily_cap_micros) == (100 * USD, 60 * USD)

        assert kb.vault.open(ledger.get_secret("stripe", "default")) == known["secret"]
        assert [t["token_id"] for t in ledger.list_admin_tokens()] == [known["admin_token_id"]]
        assert [t for t, _ in ledger.active_admin_token_hashes()] == [known["admin_token_id"]]
        assert ledger.audit_rows(AuditFilter()) == audit_before

        pending = known["pending"]
        held = {r["id"]: r for r in ledger.open_reservations(billing.key_id)}
        assert held[pending["reservation_id"]]["reserved_micros"] == pending["reserved_micros"]
        assert held[pending["reservation_id"]]["attempts_open"] == 1
        # The stopped run's answer arrives late (a reconcile, say): it settles like any hold.
        settle(ledger, pending["audit_id"], pending["reservation_id"], 14)
        after = ledger.get_key(billing.key_id)
        assert (after.spent_micros, after.reserved_micros) == (int(23.5 * USD), 4 * USD)
        assert ledger.audit_rows(AuditFilter())[pending["audit_id"] - 1]["outcome"] == "settled"
        # The vault key issued by the old code still works: derived again from the master key.
        fresh = admit(ledger, key_hash(kb.master_key, billing.key_id), 5)
        assert fresh.allowed and fresh.reservation_id > pending["reservation_id"]
    finally:
        kb.close()


def test_an_issuance_record_from_before_scopes_replays_to_unrestricted_tokens_only(home):
    """Records made before v6 name no token. Every token then was unrestricted, so an unrestricted
    token may still replay one (a parent job retried across the upgrade gets its key back); a
    scoped token never gets it: its Idempotency-Keys are its own."""
    with sqlite3.connect(home / "keybrake.db") as db:  # made just now, so within the 24 h memory
        db.execute("UPDATE issuances SET created_at = ?", (to_text(datetime.now(UTC)),))
    db.close()
    keybrake(home, "db", "upgrade")
    earlier = facts()["issued_with_idempotency"]
    ledger = open_ledger(database_of(None, home / "keybrake.db"))
    try:
        spec = ledger.get_key(earlier).spec
        same = IssuanceIdempotency("fixture-issue-1", "f" * 64, facts()["admin_token_id"], replays_unattributed=True)
        assert ledger.create_key("kbk_new_unrestricted", "u" * 64, spec, same)[0].key_id == earlier
        # A scoped token's record is its own: the same Idempotency-Key and body mint a new key.
        scoped = IssuanceIdempotency("fixture-issue-1", "f" * 64, "kbt_scoped")
        record, created = ledger.create_key("kbk_new_scoped", "s" * 64, replace(spec, minted_by="kbt_scoped"), scoped)
        assert (record.key_id, created) == ("kbk_new_scoped", True)
        assert ledger.create_key("kbk_again", "a" * 64, spec, scoped)[0].key_id == "kbk_new_scoped"
    finally:
        ledger.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_version_6_upgrades_tokens_keys_and_issuances_in_both_dialects(backend, tmp_path, request):
    url = (DatabaseUrl(backend="sqlite", path=tmp_path / "ledger.db") if backend == "sqlite"
           else parse_database_url(request.getfixturevalue("pg_url")))
    ledger = open_ledger(url, create=False, check=False)
    try:
        with ledger.database.transaction() as tx:
            migrations.apply(tx, [m for m in migrations.MIGRATIONS if m.version <= 5])
            tx.run("INSERT INTO admin_tokens (token_id, name, token_hash, created_at) "
                   "VALUES ('kbt_old', 'ci', 'h', 't')")
            tx.run("INSERT INTO vault_keys (key_id, key_hash, vendor, secret_name, allowlist, created_at) "
                   "VALUES ('kbk_old', 'kh', 'stripe', 'default', '[]', 't')")
            tx.run("INSERT INTO issuances (idempotency_key, request_fingerprint, key_id, created_at) "
                   "VALUES ('run-1', 'f', 'kbk_old', 't')")
        assert [m.version for m in migrations.upgrade(ledger.database)] == [m.version for m in migrations.MIGRATIONS if m.version > 5]
        with ledger.database.reading() as tx:
            assert dict(tx.row("SELECT token_id, scope FROM admin_tokens")) == {"token_id": "kbt_old", "scope": None}
            assert dict(tx.row("SELECT key_id, minted_by FROM vault_keys")) == {"key_id": "kbk_old", "minted_by": None}
            assert [dict(r) for r in tx.rows("SELECT * FROM issuances")] == [{
                "token_id": "unattributed", "idempotency_key": "run-1", "request_fingerprint": "f",
                "key_id": "kbk_old", "created_at": "t"}]
        with pytest.raises(Exception):  # one record per token and Idempotency-Key
            with ledger.database.transaction() as tx:
                tx.run("INSERT INTO issuances (token_id, idempotency_key, request_fingerprint, key_id, created_at) "
                       "VALUES ('unattributed', 'run-1', 'g', 'kbk_x', 't')")
        with ledger.database.transaction() as tx:  # the same Idempotency-Key from a token is its own record
            tx.run("INSERT INTO issuances (token_id, idempotency_key, request_fingerprint, key_id, created_at) "
                   "VALUES ('kbt_old', 'run-1', 'g', 'kbk_x', 't')")
    finally:
        ledger.close()


def test_a_second_upgrade_does_nothing(home):
    keybrake(home, "db", "upgrade")
    database = home / "keybrake.db"
    before = {table: raw_rows(database, table) for table in TABLES}
    second = keybrake(home, "db", "upgrade")
    assert "nothing to do" in second.output
    assert json.loads(keybrake(home, "db", "upgrade", "--json").output)["applied"] == []
    assert {table: raw_rows(database, table) for table in TABLES} == before
    assert keybrake(home, "db", "status").exit_code == 0


def test_init_gives_a_new_postgres_database_the_latest_schema(tmp_path, pg_url):
    assert schema_version(parse_database_url(pg_url)) is None
    keybrake(tmp_path / "fresh", "init", database=pg_url)
    assert schema_version(parse_database_url(pg_url)) == migrations.LATEST
    status = json.loads(keybrake(tmp_path / "fresh", "db", "status", "--json", database=pg_url).output)
    assert {m["state"] for m in status["migrations"]} == {"applied"}


# A shortened statement timeout, and DDL made slower than it: what an index rebuild on a ledger of
# millions of rows meets at the real 5 s, without the rows.
SHORT_TIMEOUT_MS = 200
SLOW_DDL_S = 0.6
BEFORE_REBUILD = 13  # schema 14 rebuilds the reservations' unique index


@pytest.mark.parametrize("work", ["upgrade", "create"])
def test_migrating_runs_past_the_statement_timeout_which_the_gate_keeps(pg_url, work):
    if work == "upgrade":
        _migrate_to(pg_url, BEFORE_REBUILD)
        _slow_ddl(pg_url, "ALTER TABLE")  # each of schema 14's two statements
        database = PostgresDatabase(pg_url, where="test", statement_timeout_ms=SHORT_TIMEOUT_MS, pool_size=2,
                                    create=False, check=False)
    else:
        _slow_ddl(pg_url, "CREATE SEQUENCE")  # the baseline's two, on PostgreSQL
        database = None
    try:
        if work == "upgrade":
            applied = migrations.upgrade(database)
            assert [m.version for m in applied] == [m.version for m in migrations.MIGRATIONS
                                                    if m.version > BEFORE_REBUILD]
        else:  # a proxy creating the schema in an empty database, as it opens its ledger
            database = PostgresDatabase(pg_url, where="test", statement_timeout_ms=SHORT_TIMEOUT_MS, pool_size=2)
        assert schema_version(parse_database_url(pg_url)) == migrations.LATEST
        # The migration's connection went back to the pool with the gate's bounds.
        assert _timeouts(database, 2) == [("200ms", "200ms")] * 2
        with pytest.raises(LedgerUnavailable, match="QueryCanceled"):
            with database.transaction() as tx:
                tx.row("SELECT pg_sleep(?) AS slept", (SLOW_DDL_S,))
    finally:
        if database is not None:
            database.close()
    # A replica opening the ledger checks the schema under the schema lock too; its gate keeps 5 s.
    replica = PostgresDatabase(pg_url, where="test")
    try:
        assert _timeouts(replica, POOL_SIZE) == [("5s", "5s")] * POOL_SIZE
    finally:
        replica.close()


def test_an_upgrade_waits_for_the_reservations_lock_no_longer_than_the_gate_would(pg_url):
    _migrate_to(pg_url, BEFORE_REBUILD)
    holder = PostgresDatabase(pg_url, where="test", create=False, check=False)
    upgrader = PostgresDatabase(pg_url, where="test", statement_timeout_ms=SHORT_TIMEOUT_MS,
                                create=False, check=False)
    try:
        with holder.transaction() as tx:
            tx.run("LOCK TABLE reservations IN ROW EXCLUSIVE MODE")  # as an admit's insert holds it
            started = time.monotonic()
            with pytest.raises(LedgerUnavailable, match="LockNotAvailable"):
                migrations.upgrade(upgrader)
            assert time.monotonic() - started < 3
        assert schema_version(parse_database_url(pg_url)) == BEFORE_REBUILD  # nothing kept
        assert [m.version for m in migrations.upgrade(upgrader)][-1] == migrations.LATEST
    finally:
        upgrader.close()
        holder.close()


def _migrate_to(url: str, version: int) -> None:
    database = PostgresDatabase(url, where="test", create=False, check=False)
    try:
        with database.transaction() as tx:
            migrations.apply(tx, [m for m in migrations.MIGRATIONS if m.version <= version])
    finally:
        database.close()


def _slow_ddl(url: str, tag: str) -> None:
    """Each `tag` statement in that database takes SLOW_DDL_S longer (an event trigger sleeps)."""
    database = PostgresDatabase(url, where="test", create=False, check=False)
    try:
        with database.transaction() as tx:
            tx.script(f"""
                CREATE FUNCTION test_slow_ddl() RETURNS event_trigger LANGUAGE plpgsql
                    AS $$ BEGIN PERFORM pg_sleep({SLOW_DDL_S}); END $$;
                CREATE EVENT TRIGGER test_slow_ddl ON ddl_command_end WHEN TAG IN ('{tag}')
                    EXECUTE FUNCTION test_slow_ddl();
            """)
    finally:
        database.close()


def _timeouts(database: PostgresDatabase, connections: int) -> list[tuple[str, str]]:
    """statement_timeout and lock_timeout on each of that many connections, held at once (the whole pool)."""
    with ExitStack() as held:
        transactions = [held.enter_context(database.transaction()) for _ in range(connections)]
        rows = [tx.row("SELECT current_setting('statement_timeout') AS statement, "
                       "current_setting('lock_timeout') AS lock") for tx in transactions]
    return [(row["statement"], row["lock"]) for row in rows]


def _columns(database: Path, table: str) -> list[dict]:
    db = sqlite3.connect(database)
    db.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in db.execute(f"PRAGMA table_info({table})")]
    finally:
        db.close()
