"""What every ledger backend must do: exact caps, settlement, retries, the daily window, reports.

Each test runs on SQLite and on PostgreSQL (see conftest.py). Requests carry an arrival stamp
from the year 2000 unless a test says otherwise: decisions use the database's clock only.
"""

from datetime import UTC, datetime, timedelta

from keybrake_addon import settlement
from keybrake_addon.ledger.base import AdmitRequest, AuditFilter, CallFacts, Resolution, SettleRequest
from keybrake_addon.ledger.corrections import apply_final_price, resolve_by_hand
from keybrake_addon.vendors.base import CostEstimate, Outcome, PricingBasis, RefusalKind

from .conftest import KEY_HASH, OTHER_HASH, USD, admit, money, settle, with_key

MIDNIGHT = datetime(2026, 11, 29, 0, 0, tzinfo=UTC)


def test_settle_release_and_unknown(ledger):
    with_key(ledger, total=100 * USD)
    first, second, third = admit(ledger, 50), admit(ledger, 30), admit(ledger, 20)
    settle(ledger, first, Resolution.SETTLE, 45, "pi_1")  # the vendor charged less than estimated
    settle(ledger, second, Resolution.RELEASE)
    settle(ledger, third, Resolution.UNKNOWN)  # a 5xx: it stays counted
    key = ledger.get_key("kbk_test")
    assert (key.spent_micros, key.reserved_micros, key.unknown_micros) == (45 * USD, 20 * USD, 20 * USD)
    assert key.remaining_micros() == 35 * USD
    assert not admit(ledger, 36).allowed
    assert admit(ledger, 35).allowed


def test_a_batch_decides_in_order_each_seeing_the_last(ledger):
    with_key(ledger, total=500 * USD)
    call = CallFacts("stripe", "POST", "/v1/payment_intents", None, MIDNIGHT)
    admissions, _ = ledger.apply_batch([AdmitRequest(KEY_HASH, call, CostEstimate(usd_micros=50 * USD))] * 64, [], [])
    assert sum(a.allowed for a in admissions) == 10
    assert len({a.audit_id for a in admissions}) == 64
    assert len({a.reservation_id for a in admissions if a.allowed}) == 10
    assert money(ledger) == (0, 500)
    # Settlements and new admits in one batch: the released holds are free for the admits after them.
    settles = [SettleRequest(a.audit_id, a.reservation_id, Resolution.RELEASE, None, 400, (), None, None, None,
                             False, 1.0) for a in admissions if a.allowed][:3]
    more, _ = ledger.apply_batch([AdmitRequest(KEY_HASH, call, CostEstimate(usd_micros=50 * USD))] * 5, settles, [])
    assert sum(a.allowed for a in more) == 3
    assert money(ledger) == (0, 500)


def test_a_settlement_applied_twice_counts_once(ledger):
    with_key(ledger, total=100 * USD)
    first = admit(ledger, 50)
    settle(ledger, first, Resolution.SETTLE, 50, "pi_1")
    settle(ledger, first, Resolution.SETTLE, 50, "pi_1")  # a retried settlement whose first commit went through
    assert money(ledger) == (50, 0)


def test_retry_with_same_idempotency_key_reserves_once_and_can_settle_an_unknown(ledger):
    with_key(ledger, total=60 * USD)
    original = admit(ledger, 50, idem="order-1")
    settle(ledger, original, Resolution.UNKNOWN)  # the connection died after the request was sent
    retry = admit(ledger, 50, idem="order-1")
    assert retry.allowed and retry.reservation_id == original.reservation_id and not retry.opened
    settle(ledger, retry, Resolution.SETTLE, 50, "pi_1")
    late = admit(ledger, 50, idem="order-1")
    settle(ledger, late, Resolution.SETTLE, 50, "pi_1")  # a second replay changes nothing
    key = ledger.get_key("kbk_test")
    assert (key.spent_micros, key.reserved_micros, key.calls) == (50 * USD, 0, 1)
    rows = ledger.audit_rows(AuditFilter())
    assert [r["actual_micros"] for r in rows] == [0, 50 * USD, 0]  # counted once, on the row that settled it
    assert [r["outcome"] for r in rows] == ["unknown", "settled", "already_settled"]


def test_max_calls_and_refusal_kinds(ledger):
    with_key(ledger, total=100 * USD, max_calls=2)
    assert admit(ledger, 0).allowed and admit(ledger, 0).allowed
    assert admit(ledger, 0).refusal.kind is RefusalKind.MAX_CALLS_EXCEEDED
    assert admit(ledger, 0, path="/v1/customers").refusal.kind is RefusalKind.NOT_ALLOWED
    assert admit(ledger, 0, key_hash="x" * 64).refusal.kind is RefusalKind.UNKNOWN_KEY
    ledger.revoke_key("kbk_test")
    assert admit(ledger, 0).refusal.kind is RefusalKind.KEY_REVOKED


def test_a_revoke_on_one_replica_refuses_the_next_call_on_another(open_ledger):
    first, second = open_ledger(), open_ledger()
    first.put_secret("stripe", "default", b"n" * 12, b"sealed", "fp", None)
    with_key(first, total=100 * USD)
    assert admit(second, 1).allowed
    assert first.revoke_key("kbk_test")
    assert admit(second, 1).refusal.kind is RefusalKind.KEY_REVOKED


def test_expiry_is_decided_by_the_database_clock(ledger, clock):
    with_key(ledger, total=100 * USD, expires_at=clock.now + timedelta(minutes=5))
    # An arrival stamp from before the expiry does not matter once the clock has passed it.
    assert admit(ledger, 1, at=clock.now).allowed
    clock.advance(minutes=5)
    assert admit(ledger, 1, at=clock.now - timedelta(minutes=10)).refusal.kind is RefusalKind.KEY_EXPIRED


# --- the daily window -----------------------------------------------------------------------------

def test_daily_cap_resets_at_midnight_utc(ledger, clock):
    with_key(ledger, daily=50 * USD)
    clock.set(MIDNIGHT - timedelta(minutes=1))
    settle(ledger, admit(ledger, 50), Resolution.SETTLE, 50)
    assert not admit(ledger, 1).allowed
    clock.advance(minutes=2)
    assert admit(ledger, 50).allowed


def test_a_call_stamped_before_midnight_that_commits_after_cannot_reopen_the_old_day(ledger, clock):
    # Before: the window came from the request's arrival stamp. A call stamped 23:59:59 that
    # committed after one at 00:00:01 moved the key's day back and wiped today's counters,
    # and the next call moved it forward again: $130 admitted on a $50 daily cap.
    with_key(ledger, daily=50 * USD)
    late_stamp = MIDNIGHT - timedelta(seconds=1)
    admitted = []
    for stamp, usd, decided_at in ((MIDNIGHT + timedelta(seconds=1), 50, 1), (late_stamp, 30, 2),
                                   (MIDNIGHT + timedelta(seconds=3), 50, 3)):
        clock.set(MIDNIGHT + timedelta(seconds=decided_at))
        admission = admit(ledger, usd, at=stamp)
        admitted.append(usd if admission.allowed else 0)
    assert sum(admitted) == 50
    assert ledger.get_key("kbk_test").today_reserved_micros == 50 * USD


def test_a_replica_whose_clock_is_behind_cannot_move_the_window_back(open_ledger, clock):
    # The database's clock decides; should a backend's clock reading ever lag another's (a
    # replica reading a clock minutes behind), the key's window still never moves back.
    ahead, behind_clock = open_ledger(), clock.__class__(MIDNIGHT - timedelta(minutes=4))
    ahead.put_secret("stripe", "default", b"n" * 12, b"sealed", "fp", None)
    with_key(ahead, daily=50 * USD)
    behind = open_ledger(behind_clock)
    clock.set(MIDNIGHT + timedelta(minutes=1))
    assert admit(ahead, 40).allowed
    assert not admit(behind, 40).allowed  # today's $40 still counts from a clock minutes behind
    assert admit(behind, 10).allowed
    assert not admit(ahead, 1).allowed
    assert ledger_day_total(ahead) == 50


def ledger_day_total(ledger) -> float:
    key = ledger.get_key("kbk_test")
    return (key.today_spent_micros + key.today_reserved_micros) / USD


def test_a_retry_after_midnight_books_its_top_up_in_the_new_day(ledger, clock):
    # Before: a call left unknown at 23:59:59 and retried at 00:00:01 for more booked the
    # top-up on the day that was over, so $199 went through on a $100 daily cap.
    with_key(ledger, daily=100 * USD)
    clock.set(MIDNIGHT - timedelta(seconds=1))
    first = admit(ledger, 1, idem="order-1")
    settle(ledger, first, Resolution.UNKNOWN)
    clock.set(MIDNIGHT + timedelta(seconds=1))
    retry = admit(ledger, 100, idem="order-1")
    assert retry.allowed and retry.reservation_id == first.reservation_id
    other = admit(ledger, 99, idem="order-2")
    assert other.refusal is not None and other.refusal.kind is RefusalKind.CAP_EXCEEDED
    assert ledger_day_total(ledger) == 100
    settle(ledger, retry, Resolution.SETTLE, 100, "pi_1")
    assert ledger_day_total(ledger) == 100 and money(ledger) == (100, 0)


def test_same_idempotency_key_on_another_endpoint_or_a_day_later_is_a_new_call(ledger, clock):
    with_key(ledger, total=200 * USD)
    first = admit(ledger, 50, idem="k")
    settle(ledger, first, Resolution.SETTLE, 50, "pi_1")
    other_endpoint = admit(ledger, 50, idem="k", path="/v1/payment_intents/pi_1/capture")
    assert other_endpoint.opened and other_endpoint.reserved_micros == 50 * USD
    clock.advance(hours=1)
    assert admit(ledger, 50, idem="k").reservation_id == first.reservation_id
    clock.advance(hours=24)
    next_day = admit(ledger, 50, idem="k")
    assert next_day.opened and next_day.reserved_micros == 50 * USD


# --- retries and the hold -------------------------------------------------------------------------

def test_a_retry_after_a_released_first_attempt_is_reserved_and_capped_again(ledger):
    # The vendor saved no result for a refused first attempt, so the retry runs for real.
    with_key(ledger, total=60 * USD)
    first = admit(ledger, 50, idem="order-1")
    settle(ledger, first, Resolution.RELEASE)  # e.g. a 400 before the vendor ran it
    assert money(ledger) == (0, 0)
    too_big = admit(ledger, 10_000, idem="order-1")
    assert too_big.refusal is not None and too_big.refusal.kind is RefusalKind.CAP_EXCEEDED
    retry = admit(ledger, 50, idem="order-1")
    assert retry.allowed and retry.reservation_id == first.reservation_id and retry.opened
    assert money(ledger) == (0, 50)
    settle(ledger, retry, Resolution.SETTLE, 50, "pi_1")
    assert money(ledger) == (50, 0)
    assert ledger.get_key("kbk_test").calls == 1  # still one call


def test_a_retry_that_costs_more_than_its_hold_tops_it_up_under_the_cap(ledger):
    with_key(ledger, total=100 * USD)
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


def test_the_hold_stays_while_a_retry_is_in_flight(ledger):
    # Before: the first attempt's release gave the hold back while its retry was in flight;
    # the retry's charge then landed with no cap check. Chained over Idempotency-Keys, each
    # step let one more cap's worth through: $300 spent on a $100 cap here.
    with_key(ledger, total=100 * USD)
    spent_by_vendor = 0
    for n in range(3):
        first = admit(ledger, 100, idem=f"order-{n}")
        if not first.allowed:
            break
        retry = admit(ledger, 100, idem=f"order-{n}")  # the SDK's retry, same Idempotency-Key
        settle(ledger, first, Resolution.RELEASE, status=400)  # e.g. the first attempt's lost race
        follow_up = admit(ledger, 100, idem=f"next-{n}")  # must not fit while the retry may still charge
        assert follow_up.refusal is not None and follow_up.refusal.kind is RefusalKind.CAP_EXCEEDED
        settle(ledger, retry, Resolution.SETTLE, 100, f"pi_{n}")  # the retry charged
        spent_by_vendor += 100
    assert spent_by_vendor == 100
    assert money(ledger) == (100, 0)


def test_the_last_attempt_to_answer_releases_a_hold_nobody_charged(ledger):
    with_key(ledger, total=100 * USD)
    first = admit(ledger, 100, idem="order-1")
    retry = admit(ledger, 100, idem="order-1")
    settle(ledger, first, Resolution.RELEASE, status=400)
    assert money(ledger) == (0, 100)
    settle(ledger, retry, Resolution.LEAVE, status=409)  # the retry's own refusal: nothing moved
    assert money(ledger) == (0, 0)
    assert admit(ledger, 100, idem="order-2").allowed


def test_a_replayed_refusal_releases_at_once(ledger):
    with_key(ledger, total=100 * USD)
    first = admit(ledger, 100, idem="order-1")
    settle(ledger, first, Resolution.UNKNOWN)
    retry = admit(ledger, 100, idem="order-1")
    settle(ledger, retry, Resolution.RELEASE, replayed=True, status=402)  # the vendor's saved answer: declined
    assert money(ledger) == (0, 0)


def answer(ledger, admission, status, outcome=None):
    """Settle as the gate does: settlement.resolve reads the vendor's answer, the ledger applies it."""
    resolution, actual = settlement.resolve(opened=admission.opened, basis=admission.basis, status=status,
                                            outcome=outcome, request_sent=True)
    ledger.settle(SettleRequest(admission.audit_id, admission.reservation_id, resolution, actual, status,
                                outcome.object_ids if outcome else (), None, None, None,
                                outcome.replayed if outcome else False, 1.0, opened=admission.opened))


CHARGED = Outcome(usd_micros=50 * USD, object_ids=("pi_1",))
REPLAYED = Outcome(usd_micros=50 * USD, object_ids=("pi_1",), replayed=True)


def test_a_replay_to_the_first_attempt_of_its_own_retrys_charge_is_counted(ledger):
    """The retry reached the vendor first and charged; the first attempt got the vendor's replay of
    that charge. It is this reservation's money, not a result saved before the reservation."""
    with_key(ledger, total=50 * USD)
    first = admit(ledger, 50, idem="order-1")
    retry = admit(ledger, 50, idem="order-1")  # a duplicate submit, or the SDK's retry after a timeout
    assert first.opened and retry.allowed and not retry.opened
    answer(ledger, first, 200, REPLAYED)
    answer(ledger, retry, 200, CHARGED)
    assert money(ledger) == (50, 0)
    assert not admit(ledger, 50, idem="order-2").allowed


def test_a_replay_to_the_first_attempt_after_its_retry_was_left_unknown_is_counted(ledger):
    with_key(ledger, total=50 * USD)
    first = admit(ledger, 50, idem="order-1")
    retry = admit(ledger, 50, idem="order-1")
    answer(ledger, retry, None)  # the retry charged; its answer was lost
    answer(ledger, first, 200, REPLAYED)
    assert money(ledger) == (50, 0)
    assert not admit(ledger, 50, idem="order-2").allowed


def test_a_replay_to_a_lone_first_attempt_counts_nothing(ledger):
    """The vendor saved that result before this reservation existed (a call made without Keybrake,
    or more than a day ago): nothing moved now."""
    with_key(ledger, total=50 * USD)
    first = admit(ledger, 50, idem="order-1")
    answer(ledger, first, 200, REPLAYED)
    assert money(ledger) == (0, 0)
    assert admit(ledger, 50, idem="order-2").allowed


def test_a_retried_capture_of_a_counted_payment_intent_counts_nothing_more(ledger):
    """A capture is free when its PaymentIntent was counted; its retry, attached to the capture's
    hold, must be read the same way, not as a new charge of the PaymentIntent's amount."""
    with_key(ledger, total=150 * USD)
    answer(ledger, admit(ledger, 100), 200, Outcome(usd_micros=100 * USD, object_ids=("pi_1",)))
    capture = CostEstimate(basis=PricingBasis.ALREADY_COUNTED, object_ref="pi_1")
    path = "/v1/payment_intents/pi_1/capture"
    first = admit(ledger, 0, idem="cap-1", path=path, estimate=capture)
    answer(ledger, first, None)  # sent, no answer: unknown
    retry = admit(ledger, 0, idem="cap-1", path=path, estimate=capture)
    assert retry.allowed and not retry.opened
    answer(ledger, retry, 200, Outcome(usd_micros=100 * USD, object_ids=("pi_1",), replayed=True))
    assert money(ledger) == (100, 0)
    assert admit(ledger, 50).allowed


def test_a_retry_decided_in_the_same_batch_as_its_first_attempt_shares_its_reservation(ledger):
    with_key(ledger, total=100 * USD)
    call = CallFacts("stripe", "POST", "/v1/payment_intents", "order-1", datetime(2000, 1, 1, tzinfo=UTC))
    request = AdmitRequest(KEY_HASH, call, CostEstimate(usd_micros=50 * USD))
    (first, retry), _ = ledger.apply_batch([request, request], [], [])
    assert first.opened and retry.allowed and not retry.opened
    assert retry.reservation_id == first.reservation_id > 0
    settle(ledger, retry, Resolution.SETTLE, 50, "pi_1")  # the retry charged
    settle(ledger, first, Resolution.UNKNOWN, status=None)
    assert money(ledger) == (50, 0)


# --- "already counted" belongs to a key -----------------------------------------------------------

CONFIRM = CostEstimate(basis=PricingBasis.ALREADY_COUNTED, object_ref="pi_known")
REFUND_ALL = CostEstimate(basis=PricingBasis.COUNTED_AMOUNT, object_ref="pi_known")


def test_already_counted_objects_are_free_and_unknown_ones_unpriced(ledger):
    with_key(ledger, total=100 * USD)
    settle(ledger, admit(ledger, 50), Resolution.SETTLE, 50, "pi_known")
    assert admit(ledger, 0, estimate=CONFIRM).reserved_micros == 0
    assert admit(ledger, 0, estimate=REFUND_ALL).reserved_micros == 50 * USD
    stranger = CostEstimate(basis=PricingBasis.ALREADY_COUNTED, object_ref="pi_stranger")
    assert admit(ledger, 0, estimate=stranger).refusal.kind is RefusalKind.UNPRICED


def test_an_object_counted_by_a_settlement_in_the_same_batch_is_counted_for_the_admits_after_it(ledger):
    """A settlement lingers for the next admit's transaction: a confirm that follows its create at
    once is decided in the batch that settles the create, and must see the count."""
    with_key(ledger, total=100 * USD)
    created = admit(ledger, 50)
    counted = SettleRequest(created.audit_id, created.reservation_id, Resolution.SETTLE, 50 * USD, 200, ("pi_known",),
                            None, None, None, False, 1.0)
    call = CallFacts("stripe", "POST", "/v1/payment_intents/pi_known/confirm", None, datetime(2000, 1, 1, tzinfo=UTC))
    (confirm, refund_all), _ = ledger.apply_batch(
        [AdmitRequest(KEY_HASH, call, CONFIRM), AdmitRequest(KEY_HASH, call, REFUND_ALL)], [counted], [])
    assert (confirm.allowed, confirm.reserved_micros) == (True, 0)
    assert (refund_all.allowed, refund_all.reserved_micros) == (True, 50 * USD)


def test_a_free_read_never_marks_an_object_counted(ledger):
    # Before: a GET settled with the object's id made a later confirm or capture of it free.
    with_key(ledger, total=100 * USD)
    read = admit(ledger, 0, method="GET", path="/v1/payment_intents/pi_known")
    settle(ledger, read, Resolution.SETTLE, 0, "pi_known")
    assert admit(ledger, 0, estimate=CONFIRM).refusal.kind is RefusalKind.UNPRICED
    assert admit(ledger, 0, estimate=REFUND_ALL).refusal.kind is RefusalKind.UNPRICED


def test_another_keys_count_is_not_this_keys(ledger):
    # Before: one key's counted object made another key's capture free and its refund cost $0.
    with_key(ledger, total=100 * USD)
    with_key(ledger, "kbk_other", OTHER_HASH, total=100 * USD)
    settle(ledger, admit(ledger, 80, key_hash=OTHER_HASH), Resolution.SETTLE, 80, "pi_known")
    assert admit(ledger, 0, estimate=CONFIRM).refusal.kind is RefusalKind.UNPRICED
    assert admit(ledger, 0, estimate=REFUND_ALL).refusal.kind is RefusalKind.UNPRICED
    assert admit(ledger, 0, estimate=CONFIRM, key_hash=OTHER_HASH).allowed


# --- proxy runs, reports, corrections -------------------------------------------------------------

def test_a_pending_hold_of_a_dead_proxy_run_is_reported_unknown(ledger, clock):
    with_key(ledger, total=100 * USD)
    ledger.register_run("dead", 2, "elsewhere")
    clock.advance(minutes=1)
    ledger.register_run("alive", 1, "elsewhere")
    for run_id in ("alive", "dead"):
        admit(ledger, 10, run_id=run_id)
    key = ledger.get_key("kbk_test")
    assert (key.reserved_micros, key.unknown_micros) == (20 * USD, 10 * USD)  # both counted, one unknown
    assert [r["state"] for r in ledger.open_reservations("kbk_test")] == ["pending", "unknown"]


def test_spend_and_audit_reports(ledger):
    with_key(ledger, total=100 * USD)
    settle(ledger, admit(ledger, 40), Resolution.SETTLE, 40, "pi_1")
    admit(ledger, 30)
    admit(ledger, 100)  # refused: cap
    [row] = ledger.spend("label", AuditFilter())
    assert row == {"label": "run", "calls": 3, "allowed": 2, "refused": 1, "cap_hits": 1,
                   "spent_micros": 40 * USD, "reserved_micros": 30 * USD}
    assert [r["decision"] for r in ledger.audit_rows(AuditFilter(key_id="kbk_test"))] == [
        "allowed", "allowed", "keybrake_cap_exceeded"]


def test_corrections_move_money_and_write_an_audit_row(ledger):
    with_key(ledger, total=100 * USD)
    estimated = admit(ledger, 10)
    settle(ledger, estimated, Resolution.SETTLE, None, "SM1")  # settled at the estimate
    lost = admit(ledger, 20)
    settle(ledger, lost, Resolution.UNKNOWN)
    assert apply_final_price(ledger, estimated.reservation_id, 7 * USD).delta_micros == -3 * USD
    assert resolve_by_hand(ledger, lost.reservation_id, 15 * USD).after_micros == 15 * USD
    assert money(ledger) == (22, 0)
    assert [r["decision"] for r in ledger.audit_rows(AuditFilter())][-2:] == ["reconciled", "reconciled"]


def test_a_long_path_from_a_stranger_is_stored_bounded(ledger):
    with_key(ledger, total=100 * USD)
    admit(ledger, 1, path="/v1/" + "x" * 1_000_000, key_hash="s" * 64)
    [row] = ledger.audit_rows(AuditFilter())
    assert row["decision"] == "keybrake_unknown_key" and len(row["path"]) <= 512


def test_the_same_settlement_twice_in_one_batch_counts_once(ledger):
    with_key(ledger, total=100 * USD)
    first = admit(ledger, 50)
    twice = SettleRequest(first.audit_id, first.reservation_id, Resolution.SETTLE, 50 * USD, 200, ("pi_1",), None,
                          None, None, False, 1.0)
    ledger.apply_batch([], [twice, twice], [])
    assert money(ledger) == (50, 0)


def test_a_caller_that_bounds_its_keyless_rows_gets_no_row_for_an_invalid_key(ledger, clock):
    """The gate records those refusals itself, within keyless_refusals.py's bounds."""
    from keybrake_addon.ledger.store import SUMMARY_DECISION, Refused
    from keybrake_addon.vendors.base import Refusal

    with_key(ledger, total=10 * USD, expires_at=clock.now + timedelta(hours=1))
    call = CallFacts("stripe", "POST", "/v1/payment_intents", None, MIDNIGHT)

    def admit_deferring(key_hash=KEY_HASH, usd=1):
        return ledger.admit(AdmitRequest(key_hash, call, CostEstimate(usd_micros=usd * USD), audit_invalid_key=False))

    unknown = admit_deferring(key_hash="x" * 64)
    assert unknown.refusal.kind is RefusalKind.UNKNOWN_KEY and unknown.audit_id is None
    assert admit_deferring(usd=11).refusal.kind is RefusalKind.CAP_EXCEEDED  # a valid key's refusal: its row as ever
    clock.advance(hours=2)
    expired = admit_deferring()  # a real key, expired: its own row as ever, never bounded away
    assert expired.refusal.kind is RefusalKind.KEY_EXPIRED and expired.audit_id is not None
    assert [r["decision"] for r in ledger.audit_rows(AuditFilter())] == ["keybrake_cap_exceeded",
                                                                         "keybrake_key_expired"]

    # What the gate writes for the unknown key instead: a row of its own, or a summary row.
    ledger.apply_batch([], [], [Refused(call, unknown.refusal, None),
                                Refused(call, Refusal(RefusalKind.UNKNOWN_KEY, "990 more refusals"), summary=True)])
    rows = ledger.audit_rows(AuditFilter())
    assert [(r["decision"], r["key_id"], r["status"]) for r in rows[2:]] == [
        ("keybrake_unknown_key", None, 401), (SUMMARY_DECISION, None, None)]


def test_keys_sharing_an_idempotency_key_in_one_batch_each_find_only_their_own(ledger):
    # A batch looks up its reservations by every (key, Idempotency-Key) pair it holds at once, so
    # it reads another key's reservation of the same Idempotency-Key too: neither may take it.
    with_key(ledger, total=100 * USD)
    with_key(ledger, "kbk_other", OTHER_HASH, total=100 * USD)
    first = admit(ledger, 60, idem="order-1")
    call = CallFacts("stripe", "POST", "/v1/payment_intents", "order-1", MIDNIGHT)
    (retry, other), _ = ledger.apply_batch([AdmitRequest(KEY_HASH, call, CostEstimate(usd_micros=60 * USD)),
                                            AdmitRequest(OTHER_HASH, call, CostEstimate(usd_micros=60 * USD))], [], [])
    assert retry.allowed and retry.reservation_id == first.reservation_id
    assert other.allowed and other.reservation_id != first.reservation_id
    assert money(ledger) == (0, 60) and money(ledger, "kbk_other") == (0, 60)
