"""A home written before migrations existed (tests/fixtures/home-v3, schema 3) upgrades in place.

Nothing may be lost: keys with their caps and money, the secret (still opened by the home's
master key), the open hold (still counted, and still settles), the audit trail, admin tokens.
"""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from keybrake_addon.home import KeybrakeHome
from keybrake_addon.installation import open_installation
from keybrake_addon.ledger import migrations
from keybrake_addon.ledger.base import AuditFilter
from keybrake_addon.ledger.opening import database_of, open_ledger, schema_version
from keybrake_addon.ledger.urls import parse_database_url

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
        (m.version, "applied" if m.version == 3 else "pending") for m in migrations.MIGRATIONS]
    text = keybrake(home, "db", "status", ok=False).output
    assert "4        pending" in text


def test_upgrade_keeps_every_row(home):
    database = home / "keybrake.db"
    before = {table: raw_rows(database, table) for table in TABLES}
    applied = json.loads(keybrake(home, "db", "upgrade", "--json").output)
    assert applied == {"database": str(database), "version": migrations.LATEST,
                       "applied": [m.version for m in migrations.MIGRATIONS if m.version > 3]}
    after = {table: raw_rows(database, table) for table in TABLES}
    for table in TABLES:
        if table in ("meta", "reservations"):
            continue
        assert after[table] == before[table], table
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


def _columns(database: Path, table: str) -> list[dict]:
    db = sqlite3.connect(database)
    db.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in db.execute(f"PRAGMA table_info({table})")]
    finally:
        db.close()
