"""The SQLite ledger: atomic reservations across threads and processes, settlement, daily reset."""

import multiprocessing
import sqlite3
import threading
from datetime import UTC, datetime, timedelta

import pytest

from keybrake_addon.ledger.base import (
    AdmitRequest, AuditFilter, CallFacts, KeySpec, LedgerUnavailable, Resolution, SettleRequest,
)
from keybrake_addon.ledger.sqlite import SqliteLedger
from keybrake_addon.vendors.base import CostEstimate, PricingBasis, RefusalKind

USD = 1_000_000
KEY_HASH = "h" * 64


def make_ledger(path, *, daily=None, total=None, max_calls=None) -> SqliteLedger:
    ledger = SqliteLedger(path)
    ledger.put_secret("stripe", "default", b"n" * 12, b"sealed", "fp", None)
    ledger.create_key("kbk_test", KEY_HASH, KeySpec(
        vendor="stripe", secret_name="default", label="run", daily_cap_micros=daily, total_cap_micros=total,
        max_calls=max_calls, allowlist=("POST /v1/payment_intents/**",), allow_all=False, allow_unpriced=False,
        expires_at=None))
    return ledger


def admit(ledger, usd, *, idem=None, at=None, path="/v1/payment_intents", estimate=None):
    call = CallFacts("stripe", "POST", path, idem, at or datetime.now(UTC))
    return ledger.admit(AdmitRequest(KEY_HASH, call, estimate or CostEstimate(usd_micros=int(usd * USD))))


def settle(ledger, admission, resolution, actual_usd=None, object_id=None):
    return ledger.settle(SettleRequest(
        admission.audit_id, admission.reservation_id, resolution,
        None if actual_usd is None else int(actual_usd * USD), 200, (object_id,) if object_id else (),
        None, None, None, False, 1.0))


def test_threads_reserve_exactly_up_to_the_cap(tmp_path):
    make_ledger(tmp_path / "l.db", daily=500 * USD).close()
    ledgers = [SqliteLedger(tmp_path / "l.db") for _ in range(8)]  # one connection each, like processes
    admitted = []
    lock = threading.Lock()

    def worker(ledger):
        for _ in range(25):
            result = admit(ledger, 50)
            with lock:
                admitted.append(result.allowed)

    threads = [threading.Thread(target=worker, args=(ledger,)) for ledger in ledgers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert admitted.count(True) == 10 and admitted.count(False) == 190
    key = ledgers[0].get_key("kbk_test")
    assert (key.reserved_micros, key.spent_micros, key.calls) == (500 * USD, 0, 10)


def _process_worker(path, results):
    ledger = SqliteLedger(path)
    results.put(sum(admit(ledger, 50).allowed for _ in range(50)))


def test_processes_reserve_exactly_up_to_the_cap(tmp_path):
    path = tmp_path / "l.db"
    make_ledger(path, total=475 * USD).close()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_process_worker, args=(path, results)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert sum(results.get(timeout=5) for _ in workers) == 9


def test_settle_release_and_unknown(tmp_path):
    ledger = make_ledger(tmp_path / "l.db", total=100 * USD)
    first, second, third = admit(ledger, 50), admit(ledger, 30), admit(ledger, 20)
    settle(ledger, first, Resolution.SETTLE, 45, "pi_1")  # the vendor charged less than estimated
    settle(ledger, second, Resolution.RELEASE)
    settle(ledger, third, Resolution.UNKNOWN)  # a 5xx: it stays counted
    key = ledger.get_key("kbk_test")
    assert (key.spent_micros, key.reserved_micros, key.unknown_micros) == (45 * USD, 20 * USD, 20 * USD)
    assert key.remaining_micros() == 35 * USD
    assert not admit(ledger, 36).allowed
    assert admit(ledger, 35).allowed


def test_retry_with_same_idempotency_key_reserves_once_and_can_settle_an_unknown(tmp_path):
    ledger = make_ledger(tmp_path / "l.db", total=60 * USD)
    original = admit(ledger, 50, idem="order-1")
    settle(ledger, original, Resolution.UNKNOWN)  # the connection died after the request was sent
    retry = admit(ledger, 50, idem="order-1")
    assert retry.allowed and retry.reservation_id == original.reservation_id and not retry.created_reservation
    settle(ledger, retry, Resolution.SETTLE, 50, "pi_1")
    late = admit(ledger, 50, idem="order-1")
    settle(ledger, late, Resolution.SETTLE, 50, "pi_1")  # a second replay changes nothing
    key = ledger.get_key("kbk_test")
    assert (key.spent_micros, key.reserved_micros, key.calls) == (50 * USD, 0, 1)
    rows = ledger.audit_rows(AuditFilter())
    assert [r["actual_micros"] for r in rows] == [0, 50 * USD, 0]  # counted once, on the row that settled it
    assert [r["outcome"] for r in rows] == ["unknown", "settled", "already_settled"]


def test_daily_cap_resets_at_midnight_utc(tmp_path):
    ledger = make_ledger(tmp_path / "l.db", daily=50 * USD)
    today = datetime(2026, 11, 28, 23, 59, tzinfo=UTC)
    settle(ledger, admit(ledger, 50, at=today), Resolution.SETTLE, 50)
    assert not admit(ledger, 1, at=today).allowed
    assert admit(ledger, 50, at=today + timedelta(minutes=2)).allowed


def test_max_calls_and_refusal_kinds(tmp_path):
    ledger = make_ledger(tmp_path / "l.db", total=100 * USD, max_calls=2)
    assert admit(ledger, 0).allowed and admit(ledger, 0).allowed
    assert admit(ledger, 0).refusal.kind is RefusalKind.MAX_CALLS_EXCEEDED
    assert admit(ledger, 0, path="/v1/customers").refusal.kind is RefusalKind.NOT_ALLOWED
    unknown = ledger.admit(AdmitRequest("x" * 64, CallFacts("stripe", "GET", "/v1/x", None, datetime.now(UTC)),
                                        CostEstimate()))
    assert unknown.refusal.kind is RefusalKind.UNKNOWN_KEY
    ledger.revoke_key("kbk_test")
    assert admit(ledger, 0).refusal.kind is RefusalKind.KEY_REVOKED


def test_already_counted_objects_are_free_and_unknown_ones_unpriced(tmp_path):
    ledger = make_ledger(tmp_path / "l.db", total=100 * USD)
    settle(ledger, admit(ledger, 50), Resolution.SETTLE, 50, "pi_known")
    confirm = CostEstimate(basis=PricingBasis.ALREADY_COUNTED, object_ref="pi_known")
    refund_all = CostEstimate(basis=PricingBasis.COUNTED_AMOUNT, object_ref="pi_known")
    assert admit(ledger, 0, estimate=confirm).reserved_micros == 0
    assert admit(ledger, 0, estimate=refund_all).reserved_micros == 50 * USD
    stranger = CostEstimate(basis=PricingBasis.ALREADY_COUNTED, object_ref="pi_stranger")
    assert admit(ledger, 0, estimate=stranger).refusal.kind is RefusalKind.UNPRICED


def test_locked_database_is_unavailable_not_a_guess(tmp_path):
    path = tmp_path / "l.db"
    make_ledger(path, total=100 * USD).close()
    ledger = SqliteLedger(path, busy_timeout_s=0.2)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(LedgerUnavailable):
            admit(ledger, 10)
    finally:
        blocker.execute("ROLLBACK")
    assert admit(ledger, 10).allowed  # recovers by itself once the lock is gone


def test_same_idempotency_key_on_another_endpoint_or_a_day_later_is_a_new_call(tmp_path):
    ledger = make_ledger(tmp_path / "l.db", total=200 * USD)
    now = datetime.now(UTC)
    first = admit(ledger, 50, idem="k", at=now)
    settle(ledger, first, Resolution.SETTLE, 50, "pi_1")
    other_endpoint = admit(ledger, 50, idem="k", at=now, path="/v1/payment_intents/pi_1/capture")
    assert other_endpoint.created_reservation and other_endpoint.reserved_micros == 50 * USD
    next_day = admit(ledger, 50, idem="k", at=now + timedelta(hours=25))
    assert next_day.created_reservation and next_day.reserved_micros == 50 * USD
    assert admit(ledger, 50, idem="k", at=now + timedelta(hours=1)).reservation_id == first.reservation_id


def test_a_pending_hold_of_a_dead_proxy_run_is_reported_unknown(tmp_path):
    from keybrake_addon.ledger.times import to_text

    ledger = make_ledger(tmp_path / "l.db", total=100 * USD)
    now = datetime.now(UTC)
    with ledger.transaction() as db:
        db.execute("INSERT INTO proxy_runs (run_id, pid, host, started_at, heartbeat_at) VALUES "
                   "('alive', 1, 'h', ?, ?), ('dead', 2, 'h', ?, ?)",
                   (to_text(now), to_text(now), to_text(now), to_text(now - timedelta(minutes=1))))
    for run_id in ("alive", "dead"):
        ledger.admit(AdmitRequest(KEY_HASH, CallFacts("stripe", "POST", "/v1/payment_intents", None, now),
                                  CostEstimate(usd_micros=10 * USD), run_id=run_id))
    key = ledger.get_key("kbk_test")
    assert (key.reserved_micros, key.unknown_micros) == (20 * USD, 10 * USD)  # both counted, one unknown
    assert [r["state"] for r in ledger.open_reservations("kbk_test")] == ["pending", "unknown"]


def test_a_never_waiting_connection_still_opens_while_another_process_briefly_writes(tmp_path):
    # Several proxies starting on one home at once: opening checks the schema, which needs the
    # write lock for a moment, even for the gate's connection that must never wait afterwards.
    from keybrake_addon.ledger.base import LedgerBusy

    path = tmp_path / "l.db"
    make_ledger(path, total=100 * USD).close()
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, lambda: blocker.execute("ROLLBACK"))
    release.start()
    ledger = SqliteLedger(path, busy_timeout_s=0)
    release.join()
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(LedgerBusy):  # once open, it does not wait for the lock
            admit(ledger, 10)
    finally:
        blocker.execute("ROLLBACK")
    assert admit(ledger, 10).allowed


def money(ledger) -> tuple[int, int]:
    key = ledger.get_key("kbk_test")
    return key.spent_micros // USD, key.reserved_micros // USD


def test_a_retry_after_a_released_first_attempt_is_reserved_and_capped_again(tmp_path):
    # The vendor saved no result for a refused first attempt, so the retry runs for real.
    ledger = make_ledger(tmp_path / "l.db", total=60 * USD)
    first = admit(ledger, 50, idem="order-1")
    settle(ledger, first, Resolution.RELEASE)  # e.g. a 400 before the vendor ran it
    assert money(ledger) == (0, 0)
    too_big = admit(ledger, 10_000, idem="order-1")
    assert too_big.refusal is not None and too_big.refusal.kind is RefusalKind.CAP_EXCEEDED
    retry = admit(ledger, 50, idem="order-1")
    assert retry.allowed and retry.reservation_id == first.reservation_id and retry.created_reservation
    assert money(ledger) == (0, 50)
    settle(ledger, retry, Resolution.SETTLE, 50, "pi_1")
    assert money(ledger) == (50, 0)
    assert ledger.get_key("kbk_test").calls == 1  # still one call


def test_a_retry_that_costs_more_than_its_hold_tops_it_up_under_the_cap(tmp_path):
    ledger = make_ledger(tmp_path / "l.db", total=100 * USD)
    first = admit(ledger, 50, idem="order-1")
    settle(ledger, first, Resolution.UNKNOWN)  # a 5xx: the vendor may or may not have run it
    refused = admit(ledger, 200, idem="order-1")
    assert refused.refusal is not None and refused.refusal.kind is RefusalKind.CAP_EXCEEDED
    bigger = admit(ledger, 80, idem="order-1")
    assert bigger.allowed and bigger.reservation_id == first.reservation_id and bigger.reserved_micros == 30 * USD
    assert money(ledger) == (0, 80)
    smaller = admit(ledger, 20, idem="order-1")
    assert smaller.allowed and smaller.reserved_micros == 0  # the hold already covers it
    settle(ledger, bigger, Resolution.SETTLE, 80, "pi_1")
    assert money(ledger) == (80, 0)


def test_a_retry_answered_after_the_first_attempt_was_released_is_still_counted(tmp_path):
    # The retry attached while the first attempt's hold was open; the first attempt's release
    # landed before the retry's answer. The retry's charge must still count.
    ledger = make_ledger(tmp_path / "l.db", total=100 * USD)
    first = admit(ledger, 50, idem="order-1")
    retry = admit(ledger, 50, idem="order-1")
    assert retry.allowed and not retry.created_reservation
    settle(ledger, first, Resolution.RELEASE)
    settle(ledger, retry, Resolution.SETTLE, 50, "pi_1")
    assert money(ledger) == (50, 0)
    other = admit(ledger, 50, idem="order-2")
    third = admit(ledger, 50, idem="order-2")
    settle(ledger, other, Resolution.RELEASE)
    settle(ledger, third, Resolution.UNKNOWN)  # its connection died: the hold counts again
    assert money(ledger) == (50, 50)
