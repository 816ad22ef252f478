"""Retry storm: the vendor charges, then the answer is lost; the SDK retries; each charge counts once.

FakeStripe moves the money, saves the success under the call's Idempotency-Key, and then (at the
seeded rate) answers 500 or drops the connection. stripe-python retries with the same
Idempotency-Key (max_network_retries=2), so the retry gets the saved answer as a replay
(`Idempotent-Replayed: true`) and Keybrake settles the first attempt's hold from it.

What must hold, exactly: every call succeeds in the end; the ledger's spent equals the money the
fake really moved (once per call, never per attempt); nothing stays reserved or open; the
reservations number the calls while the audit rows number the attempts the vendor saw.
"""

import random
import sqlite3
import time

import pytest
import stripe

from support.settling import until_settled
from e2e.helpers import REAL_SECRET, keybrake_json
from keybrake_addon.fakes.fake_stripe import FakeStripe
from keybrake_addon.proxy_process import ProxyProcess

from keybrake_addon.ledger.base import AuditFilter

from .load import run_parallel

BOTH_BACKENDS = True  # retries and the cap: run on SQLite and on PostgreSQL

CALLS = 500
WORKERS = 50
AMOUNT_CENTS = 5000  # $50
FAULT_RATE = 0.10
SEED = 20240611
MICROS_PER_CENT = 10_000  # 1 USD = 1_000_000 micros = 100 cents
PI = {"amount": AMOUNT_CENTS, "currency": "usd", "confirm": True, "payment_method": "pm_card_visa"}




def wait_until_settled(ledger, key_id: str) -> int:
    return until_settled(lambda: len(ledger.open_reservations(key_id)))


def seeded_faults(seed: int, rolls: int, rate: float) -> int:
    """How many of FakeStripe's fault rolls come up for this seed.

    The fake rolls its seeded RNG once per request that moves money (a replay returns before the
    roll and moves nothing), and only for the fault kind whose rate is > 0. With 500 charges and
    no other failure, that is exactly the number of injected faults, whatever the thread order.
    """
    rng = random.Random(seed)
    return sum(rng.random() < rate for _ in range(rolls))


@pytest.mark.parametrize("fault", ["fail_after_charge_rate", "drop_after_charge_rate"])
def test_retry_storm_counts_each_charge_once(fault, home, tmp_path, monkeypatch, figures, ledger_of,
                                            ledger_backend):
    started = time.monotonic()
    key = keybrake_json(home, "issue", "--vendor", "stripe", "--total-usd-cap", "100000",
                        "--allow", "POST /v1/payment_intents")
    with FakeStripe(secret=REAL_SECRET, seed=SEED, **{fault: FAULT_RATE}) as fake:
        proxy = ProxyProcess(home=home, upstreams=(f"stripe={fake.url}",), log_path=tmp_path / "proxy.log").start()
        try:
            monkeypatch.setenv("HTTPS_PROXY", proxy.url)
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
            monkeypatch.setattr(stripe, "ca_bundle_path", str(home / "certs" / "keybrake-ca-bundle.pem"))
            # One client shared by all workers; the SDK reuses a call's Idempotency-Key on its retries.
            client = stripe.StripeClient(key["vault_key"], max_network_retries=2)
            results = run_parallel(CALLS, lambda i: client.v1.payment_intents.create(params=PI), WORKERS)
            batch_s = time.monotonic() - started
            ledger = ledger_of()
            still_open = wait_until_settled(ledger, key["key_id"])
            attempts, moved_cents, objects = fake.hits, fake.money_moved_minor, fake.objects_created
        finally:
            proxy.stop()

    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, f"{len(failures)} calls failed, e.g. {failures[0]!r}"
    assert len({r.id for r in results}) == CALLS  # 500 distinct PaymentIntents reached the workers
    assert still_open == 0, f"{still_open} reservations still open 30 s after the batch"
    assert len(objects) == CALLS and moved_cents == CALLS * AMOUNT_CENTS  # the fake charged each call once

    record = ledger.get_key(key["key_id"])
    rows = ledger.audit_rows(AuditFilter(key_id=key["key_id"]))
    reservations = len({r["reservation_id"] for r in rows if r["reservation_id"] is not None})
    audit = {"n": len(rows), "replays": sum(bool(r["replayed"]) for r in rows),
             "faulted": sum(r["status"] is None or r["status"] >= 500 for r in rows),
             "refused": sum(r["decision"] != "allowed" for r in rows)}
    [spend] = ledger.spend("key", AuditFilter(key_id=key["key_id"]))

    spent = record.spent_micros
    assert spent == moved_cents * MICROS_PER_CENT == CALLS * 50 * 1_000_000  # counted once, to the micro
    assert spend["spent_micros"] == spent  # the settled reservations add up to the key's counter
    assert record.reserved_micros == 0
    assert record.calls == CALLS  # `calls` counts reservations, not attempts
    assert reservations == CALLS  # one reservation per call...
    assert audit["n"] == attempts  # ...and one audit row per attempt the vendor saw
    assert audit["refused"] == 0
    shown = keybrake_json(home, "keys", "show", key["key_id"])
    assert (shown["spent_usd"], shown["reserved_usd"], shown["unknown_usd"]) == ("25000.00", "0.00", "0.00")
    assert shown["open_reservations"] == []
    if ledger_backend == "sqlite":
        with sqlite3.connect(home / "keybrake.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    # Every injected fault cost exactly one retry, and every retry was answered by a replay.
    injected = seeded_faults(SEED, CALLS, FAULT_RATE)
    assert audit["faulted"] == injected
    assert audit["replays"] == injected
    assert attempts == CALLS + injected
    # The naive arithmetic, if every attempt (retries included) failed independently at 10% and
    # the SDK retried up to twice: 500 x (1 + 0.1 + 0.01) = 555 attempts expected. The fake never
    # fails a replay (it answers from its saved result before rolling for a fault), so a failed
    # call needs exactly one retry: the expectation is 500 x (1 + 0.1) = 550, and with this seed
    # exactly 500 + (rolls < 0.1 among the fake's 500 seeded rolls).
    naive = CALLS * (1 + FAULT_RATE + FAULT_RATE ** 2)
    figures.record(
        f"retry_storm[{fault.removesuffix('_after_charge_rate')}, {ledger_backend}]",
        calls=CALLS, workers=WORKERS, attempts_seen_upstream=attempts,
        faults_injected=injected, replays=audit["replays"], reservations=reservations, audit_rows=audit["n"],
        spent_usd=f"{spent / 1_000_000:.2f}", charged_usd=f"{moved_cents / 100:.2f}",
        naive_expected_attempts=f"{naive:.0f} (500 x 1.11, independent faults on every attempt)",
        expected_attempts=f"{CALLS * (1 + FAULT_RATE):.0f} (replays never fail), seed {SEED}: {CALLS + injected}",
        batch_s=round(batch_s, 1),
    )
