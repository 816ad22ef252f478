"""A replica (or a `keybrake` command) frozen while it holds a key's lock, on PostgreSQL.

A process stopped by SIGSTOP, a debugger, a Ctrl-Z in a terminal or a long pause of its host
keeps its TCP connection (the kernel still answers keepalives), so its open transaction keeps
the key's row lock. Every other replica's batch that touches that key waits for the lock, and a
batch that waits past the lock timeout fails whole, with every other key's calls in it. The
server ends a session idle in a transaction after a bound shorter than that timeout, so the
others' batches get the lock and commit.
"""

import threading
import time
from datetime import UTC, datetime

import psycopg
import pytest

from keybrake_addon.ledger import store
from keybrake_addon.ledger.base import AdmitRequest, CallFacts, LedgerUnavailable
from keybrake_addon.ledger.postgres import IDLE_IN_TRANSACTION_TIMEOUT_MS, STATEMENT_TIMEOUT_MS, PostgresLedger
from keybrake_addon.vendors.base import CostEstimate

from .conftest import KEY_HASH, USD, money, with_key

OTHER_HASH = "f" * 64


def admit_request(key_hash: str, usd: int) -> AdmitRequest:
    call = CallFacts("stripe", "POST", "/v1/payment_intents", None, datetime(2000, 1, 1, tzinfo=UTC))
    return AdmitRequest(key_hash, call, CostEstimate(usd_micros=usd * USD))


@pytest.fixture
def two_replicas(pg_url):
    """Replica A and replica B on one ledger, with keys kbk_test and kbk_other ($100 each)."""
    frozen = PostgresLedger(pg_url, where="replica-a")
    serving = PostgresLedger(pg_url, where="replica-b")
    serving.put_secret("stripe", "default", b"n" * 12, b"sealed", "fp", None)
    with_key(serving, total=100 * USD)
    with_key(serving, key_id="kbk_other", key_hash=OTHER_HASH, total=100 * USD)
    yield frozen, serving
    frozen.close()
    serving.close()


def test_the_idle_bound_is_shorter_than_the_lock_wait():
    assert IDLE_IN_TRANSACTION_TIMEOUT_MS < STATEMENT_TIMEOUT_MS


def freeze_mid_batch(frozen, monkeypatch, moment: str) -> tuple[threading.Thread, threading.Event, list]:
    """Replica A's batch on a thread of its own, stopped once its key is locked and its decision
    made, before or after it writes its rows (short of the COMMIT): what the server sees of a
    replica frozen mid-batch. The list gets how the batch ended once it is let go."""
    locked, thaw, ended = threading.Event(), threading.Event(), []
    write = store._Batch.write

    def freeze() -> None:
        if threading.current_thread().name == "replica-a":
            locked.set()
            assert thaw.wait(30)

    def write_with_a_freeze(batch):
        if moment == "before its writes":
            freeze()
        write(batch)
        if moment == "after its writes":
            freeze()

    def run() -> None:
        try:
            ended.append(frozen.apply_batch([admit_request(KEY_HASH, 5)], [], []))
        except LedgerUnavailable as error:
            ended.append(error)

    monkeypatch.setattr(store._Batch, "write", write_with_a_freeze)
    batch = threading.Thread(name="replica-a", target=run)
    batch.start()
    assert locked.wait(10)
    return batch, thaw, ended


@pytest.mark.parametrize("moment", ["before its writes", "after its writes"])
def test_a_replica_frozen_mid_batch_stalls_the_others_briefly_and_fails_none(two_replicas, monkeypatch, moment):
    frozen, serving = two_replicas
    batch, thaw, ended = freeze_mid_batch(frozen, monkeypatch, moment)
    try:
        started = time.monotonic()
        admissions, _ = serving.apply_batch([admit_request(KEY_HASH, 10), admit_request(OTHER_HASH, 20)], [], [])
        waited = time.monotonic() - started
    finally:
        thaw.set()
        batch.join(10)

    assert [a.allowed for a in admissions] == [True, True]
    assert waited < STATEMENT_TIMEOUT_MS / 1000
    assert len(ended) == 1 and isinstance(ended[0], LedgerUnavailable)  # the server ended A's session
    assert money(serving) == (0, 10) and money(serving, "kbk_other") == (0, 20)  # nothing of A's committed
    assert frozen.admit(admit_request(KEY_HASH, 5)).allowed  # A's pool replaces the ended connection


def test_a_command_frozen_holding_a_keys_lock_is_ended_too(two_replicas):
    """A transaction outside the batch path (`reconcile`'s correction, a revoke) stopped by Ctrl-Z."""
    frozen, serving = two_replicas
    holding = frozen.database.transaction()
    tx = holding.__enter__()
    tx.row("SELECT key_id FROM vault_keys WHERE key_id = 'kbk_test' FOR UPDATE")

    started = time.monotonic()
    assert serving.admit(admit_request(KEY_HASH, 10)).allowed
    assert time.monotonic() - started < STATEMENT_TIMEOUT_MS / 1000
    with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout) as ended:
        tx.row("SELECT 1 AS still_here")
    with pytest.raises(LedgerUnavailable):
        holding.__exit__(ended.type, ended.value, ended.tb)


def test_a_schema_change_may_pause_between_statements(two_replicas):
    """`db copy` reads the source between its writes, inside the target's schema transaction."""
    frozen, _ = two_replicas
    with frozen.database.transaction() as tx:
        tx.lock_schema()
        time.sleep(IDLE_IN_TRANSACTION_TIMEOUT_MS / 1000 + 0.5)
        assert tx.row("SELECT 1 AS still_here")["still_here"] == 1
