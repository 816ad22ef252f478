"""A correction (`keybrake reconcile`) racing the gate's settlement of the same reservation.

On PostgreSQL the correction runs on another connection (the CLI, or another replica's API)
while a gate batch may hold the key's lock with that reservation's settlement written. The
correction must decide on the reservation as it is once it holds the key's lock, or it moves the
same hold a second time.
"""

import threading
import time

import psycopg
import pytest

from keybrake_addon.ledger import store
from keybrake_addon.ledger.base import Resolution
from keybrake_addon.ledger.corrections import NotCorrectable, resolve_by_hand
from keybrake_addon.ledger.postgres import PostgresLedger

from .conftest import USD, admit, money, settle, with_key


def wait_for_a_lock_wait(url: str, timeout_s: float = 10.0) -> None:
    with psycopg.connect(url, autocommit=True) as watch:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            waiting = watch.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                    "AND datname = current_database()").fetchone()[0]
            if waiting:
                return
            time.sleep(0.02)
    pytest.fail("the correction never waited for the key's lock")


@pytest.fixture
def gate_and_operator(pg_url, clock):
    """Two connections to one ledger holding kbk_test ($100 cap): the gate's, and the CLI's."""
    gate = PostgresLedger(pg_url, where="gate", clock=clock)
    operator = PostgresLedger(pg_url, where="cli", clock=clock)
    gate.put_secret("stripe", "default", b"n" * 12, b"sealed", "fp", None)
    with_key(gate, total=100 * USD)
    yield gate, operator
    gate.close()
    operator.close()


def release_by_hand_meanwhile(operator, reservation_id: int) -> tuple[threading.Thread, list[str]]:
    """`keybrake reconcile --reservation ID --release` on a thread of its own; the list gets its refusal."""
    refused: list[str] = []

    def release() -> None:
        try:
            resolve_by_hand(operator, reservation_id, None)
        except NotCorrectable as error:
            refused.append(str(error))

    releasing = threading.Thread(target=release)
    releasing.start()
    return releasing, refused


def test_a_release_by_hand_racing_the_settlement_moves_the_hold_once(gate_and_operator, pg_url, monkeypatch):
    gate, operator = gate_and_operator
    first, second = admit(gate, 10), admit(gate, 50)
    assert first.allowed and second.allowed and money(gate) == (0, 60)

    written, go_on = threading.Event(), threading.Event()
    write = store._Batch.write

    def write_then_hold_the_lock(batch):
        write(batch)
        if threading.current_thread().name == "gate-settling":
            written.set()  # the key is locked, the settlement written and not yet committed
            assert go_on.wait(10)

    monkeypatch.setattr(store._Batch, "write", write_then_hold_the_lock)
    settling = threading.Thread(name="gate-settling", target=settle, args=(gate, first, Resolution.SETTLE, 10))
    settling.start()
    assert written.wait(10)
    releasing, refused = release_by_hand_meanwhile(operator, first.reservation_id)
    wait_for_a_lock_wait(pg_url)
    go_on.set()
    settling.join(10)
    releasing.join(10)
    assert refused == [f"reservation {first.reservation_id} is already settled"]
    assert money(gate) == (10, 50)  # the second call's $50 still held
    assert not admit(gate, 50).allowed  # $10 spent + $50 held + $50 > $100


def test_a_correction_of_a_reservation_pruned_while_it_waited_says_so(gate_and_operator, pg_url):
    gate, operator = gate_and_operator
    held = admit(gate, 10)
    with psycopg.connect(pg_url) as pruner:  # as `keybrake audit prune` would, under the key's lock
        pruner.execute("SELECT key_id FROM vault_keys WHERE key_id = 'kbk_test' FOR UPDATE")
        releasing, refused = release_by_hand_meanwhile(operator, held.reservation_id)
        wait_for_a_lock_wait(pg_url)
        pruner.execute("DELETE FROM reservations WHERE id = %s", (held.reservation_id,))
        pruner.commit()
    releasing.join(10)
    assert refused == [f"no reservation {held.reservation_id}"]
