"""The pre-migration home of tests/fixtures/home-v3, copied for a test, and ways to drive it."""

import json
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner

from keybrake_addon.cli.main import cli
from keybrake_addon.ledger.base import AdmitRequest, CallFacts, Resolution, SettleRequest
from keybrake_addon.vault.crypto import derive_subkey
from keybrake_addon.vault.issuance import DERIVATION_PURPOSE
from keybrake_addon.vault.vault_keys import derive_vault_key, hash_vault_key
from keybrake_addon.vendors.base import CostEstimate

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "home-v3"
USD = 1_000_000


def copy_home_v3(into: Path) -> Path:
    """A writable copy of the fixture home (never touch the committed files)."""
    home = into / "home"
    home.mkdir(mode=0o700)
    for name in ("keybrake.db", "master.key"):
        shutil.copyfile(FIXTURE / name, home / name)
    (home / "master.key").chmod(0o600)
    return home


def facts() -> dict:
    return json.loads((FIXTURE / "facts.json").read_text())


def raw_rows(database: Path, table: str) -> list[dict]:
    """A table's rows read with sqlite3 alone, whatever the schema version."""
    db = sqlite3.connect(database)
    db.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in db.execute(f"SELECT * FROM {table} ORDER BY rowid")]
    finally:
        db.close()


def keybrake(home: Path, *args: str, database: str | None = None, ok: bool = True):
    options = ["--home", str(home)] + (["--database", database] if database else [])
    result = CliRunner().invoke(cli, [*options, *args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def key_hash(master_key: bytes, key_id: str, vendor: str = "stripe") -> str:
    """The hash of the vault key the home issued as `key_id`, derived again from its master key."""
    return hash_vault_key(derive_vault_key(derive_subkey(master_key, DERIVATION_PURPOSE), vendor, key_id))


def admit(ledger, key_hash_: str, usd: float, path: str = "/v1/payment_intents"):
    call = CallFacts("stripe", "POST", path, None, datetime.now(UTC))
    return ledger.admit(AdmitRequest(key_hash_, call, CostEstimate(usd_micros=int(usd * USD))))


def settle(ledger, audit_id: int, reservation_id: int, actual_usd: float) -> None:
    ledger.settle(SettleRequest(audit_id, reservation_id, Resolution.SETTLE, int(actual_usd * USD), 200,
                                ("pi_after",), None, None, None, False, 1.0))
