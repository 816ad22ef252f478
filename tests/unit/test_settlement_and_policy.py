"""Settlement of reservations, the per-call policy rules, and KeyRecord arithmetic."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from keybrake_addon import policy
from keybrake_addon.ledger import decisions
from keybrake_addon.ledger.base import KeyRecord, KeySpec, Resolution
from keybrake_addon.settlement import resolve
from keybrake_addon.vendors.base import Outcome, PricingBasis, Refusal, RefusalKind

USD = 1_000_000
FIXED = PricingBasis.FIXED
OK = Outcome(usd_micros=42 * USD, object_ids=("pi_1",))
REPLAYED = Outcome(usd_micros=42 * USD, object_ids=("pi_1",), replayed=True)
SILENT = Outcome(usd_micros=None)


# --- settlement ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs, expected",
    [
        # no response, never sent: our own hold goes back; a retry's hold is not ours to touch
        (dict(opened=True, basis=FIXED, status=None, outcome=None, request_sent=False),
         (Resolution.RELEASE, None)),
        (dict(opened=False, basis=None, status=None, outcome=None, request_sent=False),
         (Resolution.LEAVE, None)),
        # no response after sending: money may have moved
        (dict(opened=True, basis=FIXED, status=None, outcome=None, request_sent=True),
         (Resolution.UNKNOWN, None)),
        (dict(opened=False, basis=None, status=None, outcome=None, request_sent=True),
         (Resolution.UNKNOWN, None)),
        # 5xx
        (dict(opened=True, basis=FIXED, status=500, outcome=SILENT, request_sent=True),
         (Resolution.UNKNOWN, None)),
        (dict(opened=True, basis=FIXED, status=503, outcome=OK, request_sent=True),
         (Resolution.UNKNOWN, None)),
        # 2xx
        (dict(opened=True, basis=FIXED, status=200, outcome=OK, request_sent=True),
         (Resolution.SETTLE, 42 * USD)),
        # a replay is passed on at its amount: the ledger tells whose money it was (replays_an_older_call)
        (dict(opened=True, basis=FIXED, status=200, outcome=REPLAYED, request_sent=True),
         (Resolution.SETTLE, 42 * USD)),
        (dict(opened=False, basis=None, status=200, outcome=REPLAYED, request_sent=True),
         (Resolution.SETTLE, 42 * USD)),
        (dict(opened=True, basis=PricingBasis.ALREADY_COUNTED, status=200, outcome=OK, request_sent=True),
         (Resolution.SETTLE, 0)),
        (dict(opened=True, basis=FIXED, status=201, outcome=SILENT, request_sent=True),
         (Resolution.SETTLE, None)),
        (dict(opened=True, basis=FIXED, status=200, outcome=None, request_sent=True),
         (Resolution.SETTLE, None)),
        (dict(opened=True, basis=PricingBasis.COUNTED_AMOUNT, status=200,
              outcome=Outcome(usd_micros=5 * USD), request_sent=True),
         (Resolution.SETTLE, 5 * USD)),
        # 1xx / 3xx: nobody answers a money call like this
        (dict(opened=True, basis=FIXED, status=302, outcome=SILENT, request_sent=True),
         (Resolution.UNKNOWN, None)),
        (dict(opened=True, basis=FIXED, status=101, outcome=SILENT, request_sent=True),
         (Resolution.UNKNOWN, None)),
        # 4xx: final, nothing moved
        (dict(opened=True, basis=FIXED, status=402, outcome=SILENT, request_sent=True),
         (Resolution.RELEASE, None)),
        (dict(opened=True, basis=FIXED, status=400, outcome=SILENT, request_sent=True),
         (Resolution.RELEASE, None)),
        (dict(opened=False, basis=None, status=402, outcome=SILENT, request_sent=True),
         (Resolution.LEAVE, None)),
        # a retry's own refusal says nothing about the first attempt, unless it is a replay of it
        (dict(opened=False, basis=None, status=409, outcome=SILENT, request_sent=True),
         (Resolution.LEAVE, None)),
        (dict(opened=False, basis=None, status=400, outcome=SILENT, request_sent=True),
         (Resolution.LEAVE, None)),
        (dict(opened=True, basis=FIXED, status=409, outcome=SILENT, request_sent=True),
         (Resolution.RELEASE, None)),
        (dict(opened=False, basis=None, status=402, outcome=Outcome(usd_micros=None, replayed=True),
              request_sent=True),
         (Resolution.RELEASE, None)),
    ],
    ids=["unsent-own", "unsent-attached", "sent-no-answer-own", "sent-no-answer-attached", "500", "503",
         "2xx", "2xx-replayed-own", "2xx-replayed-attached", "already-counted", "2xx-silent",
         "2xx-no-outcome", "2xx-counted-amount", "302", "101", "402-own", "400-own", "402-attached",
         "409-attached", "400-idem-attached", "409-own", "402-replayed-attached"],
)
def test_resolve(kwargs, expected):
    assert resolve(**kwargs) == expected


def test_attached_retry_rate_limited_says_nothing_about_the_original():
    # A retry that attached to an earlier reservation (e.g. left UNKNOWN after a timeout) and is
    # answered 429 by Stripe's rate limiter: Stripe saves no idempotent result for a request it
    # did not start executing, so this answer says nothing about whether the first attempt moved
    # money. Releasing the hold would under-count; the reservation should be left alone.
    got = resolve(opened=False, basis=None, status=429, outcome=SILENT, request_sent=True)
    assert got == (Resolution.LEAVE, None)


# --- policy --------------------------------------------------------------------------------------

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)

SPEC = KeySpec(vendor="stripe", secret_name="default", label="job-7", daily_cap_micros=None,
               total_cap_micros=500 * USD, max_calls=None,
               allowlist=("GET /v1/customers", "POST /v1/payment_intents"),
               allow_all=False, allow_unpriced=False, expires_at=None)


def record(spec: KeySpec = SPEC, *, revoked_at=None, spent=0, reserved=0, calls=0, today_spent=0,
           today_reserved=0) -> KeyRecord:
    return KeyRecord(key_id="kbk_1", spec=spec, created_at=T0 - timedelta(days=1), revoked_at=revoked_at,
                     spent_micros=spent, reserved_micros=reserved, calls=calls, today_spent_micros=today_spent,
                     today_reserved_micros=today_reserved)


def call(method="POST", path="/v1/payment_intents", vendor="stripe", at=T0) -> dict:
    """A call's facts as key_refusal takes them; `at` is the ledger's clock at decision time."""
    return dict(vendor=vendor, method=method, path=path, now=at)


def test_key_refusal_none_when_allowed():
    assert policy.key_refusal(record(), **call()) is None
    assert policy.key_refusal(record(), **call("get", "/v1/customers")) is None


def test_key_refusal_revoked_wins():
    key = record(replace(SPEC, expires_at=T0 - timedelta(hours=1)), revoked_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    got = policy.key_refusal(key, **call())
    assert got == Refusal(RefusalKind.KEY_REVOKED, "Keybrake vault key kbk_1 was revoked at 2026-01-02T03:04:05Z. "
                                                   "Ask the parent job for a new key.")


@pytest.mark.parametrize("offset, refused", [(timedelta(0), True), (timedelta(seconds=1), True),
                                             (-timedelta(seconds=1), False)])
def test_key_refusal_expired_at_the_instant(offset, refused):
    key = record(replace(SPEC, expires_at=T0))
    got = policy.key_refusal(key, **call(at=T0 + offset))
    if refused:
        assert got == Refusal(RefusalKind.KEY_EXPIRED, "Keybrake vault key kbk_1 expired at 2026-03-01T12:00:00Z. "
                                                       "Ask the parent job for a new key.")
    else:
        assert got is None


def test_key_refusal_wrong_vendor():
    got = policy.key_refusal(record(), **call(vendor="resend", path="/emails"))
    assert got == Refusal(RefusalKind.WRONG_VENDOR, "Keybrake vault key kbk_1 is for stripe, not resend.")


def test_key_refusal_allowlist_miss_lists_the_allowlist():
    got = policy.key_refusal(record(), **call("POST", "/v1/refunds"))
    assert got == Refusal(RefusalKind.NOT_ALLOWED,
                          "Keybrake vault key kbk_1 does not allow POST /v1/refunds. "
                          "It allows: GET /v1/customers, POST /v1/payment_intents.")


def test_key_refusal_empty_allowlist_allows_nothing():
    got = policy.key_refusal(record(replace(SPEC, allowlist=())), **call())
    assert got.kind is RefusalKind.NOT_ALLOWED
    assert got.message.endswith("It allows: nothing.")


def test_key_refusal_allow_all():
    assert policy.key_refusal(record(replace(SPEC, allowlist=(), allow_all=True)), **call("POST", "/v1/refunds")) is None


@pytest.mark.parametrize(
    "spent, reserved, cost",
    [
        (450 * USD, 0, 50 * USD),  # exactly at the cap
        (400 * USD, 50 * USD, 50 * USD),
        (0, 0, 500 * USD),
        (500 * USD, 0, 0),
    ],
)
def test_cap_refusal_exactly_at_the_cap_is_allowed(spent, reserved, cost):
    assert cap_refusal(record(spent=spent, reserved=reserved), cost) is None


def test_cap_refusal_one_micro_over_the_total_cap():
    got = cap_refusal(record(spent=400 * USD, reserved=50 * USD), 50 * USD + 1)
    assert got == Refusal(RefusalKind.CAP_EXCEEDED,
                          "Keybrake cap reached for vault key kbk_1 (label job-7): total cap $500.00, "
                          "spent $400.00, reserved $50.00, this call $50.000001.", cap="key")


def test_cap_refusal_daily_uses_today_totals():
    spec = replace(SPEC, daily_cap_micros=100 * USD, total_cap_micros=None, label=None)
    # Lifetime spend is irrelevant to a daily-only key.
    assert cap_refusal(record(spec, spent=10_000 * USD, today_spent=80 * USD, today_reserved=10 * USD),
                              10 * USD) is None
    got = cap_refusal(record(spec, spent=10_000 * USD, today_spent=80 * USD, today_reserved=10 * USD),
                             10 * USD + 10_000)
    assert got == Refusal(RefusalKind.CAP_EXCEEDED,
                          "Keybrake cap reached for vault key kbk_1: daily cap $100.00, spent $80.00, "
                          "reserved $10.00, this call $10.01.", cap="key")


def test_cap_refusal_daily_hit_while_total_has_room():
    spec = replace(SPEC, daily_cap_micros=100 * USD, total_cap_micros=1_000 * USD)
    got = cap_refusal(record(spec, spent=100 * USD, today_spent=95 * USD), 6 * USD)
    assert got.kind is RefusalKind.CAP_EXCEEDED
    assert "daily cap $100.00, spent $95.00, reserved $0.00, this call $6.00." in got.message


def test_cap_refusal_total_checked_before_daily():
    spec = replace(SPEC, daily_cap_micros=100 * USD, total_cap_micros=200 * USD)
    got = cap_refusal(record(spec, spent=190 * USD, today_spent=95 * USD), 20 * USD)
    assert "total cap $200.00, spent $190.00, reserved $0.00, this call $20.00." in got.message


@pytest.mark.parametrize("max_calls, calls, refused", [(3, 2, False), (3, 3, True), (3, 7, True), (0, 0, True)])
def test_cap_refusal_max_calls(max_calls, calls, refused):
    spec = replace(SPEC, max_calls=max_calls, total_cap_micros=None)
    got = cap_refusal(record(spec, calls=calls), 0)
    if refused:
        assert got == Refusal(RefusalKind.MAX_CALLS_EXCEEDED,
                              f"Keybrake cap reached for vault key kbk_1 (label job-7): "
                              f"it allows {max_calls} calls and has made {calls}.", cap="key")
    else:
        assert got is None


def test_cap_refusal_without_caps():
    spec = replace(SPEC, total_cap_micros=None)
    assert cap_refusal(record(spec, spent=10**12), 10**12) is None


# --- KeyRecord -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "daily, total, spent, reserved, today_spent, today_reserved, remaining",
    [
        (None, None, 5 * USD, 0, 0, 0, None),
        (None, 500 * USD, 400 * USD, 50 * USD, 0, 0, 50 * USD),
        (100 * USD, None, 999 * USD, 0, 30 * USD, 20 * USD, 50 * USD),
        (100 * USD, 500 * USD, 450 * USD, 0, 10 * USD, 0, 50 * USD),  # total is tighter
        (100 * USD, 500 * USD, 100 * USD, 0, 80 * USD, 5 * USD, 15 * USD),  # daily is tighter
        (None, 500 * USD, 600 * USD, 0, 0, 0, 0),  # over the cap: never negative
        (10 * USD, None, 0, 0, 0, 12 * USD, 0),
    ],
)
def test_remaining_micros(daily, total, spent, reserved, today_spent, today_reserved, remaining):
    spec = replace(SPEC, daily_cap_micros=daily, total_cap_micros=total)
    key = record(spec, spent=spent, reserved=reserved, today_spent=today_spent, today_reserved=today_reserved)
    assert key.remaining_micros() == remaining


@pytest.mark.parametrize(
    "revoked_at, expires_at, now, status",
    [
        (None, None, T0, "active"),
        (None, T0, T0 - timedelta(seconds=1), "active"),
        (None, T0, T0, "expired"),
        (T0 - timedelta(days=1), T0 + timedelta(days=1), T0, "revoked"),
        (T0 - timedelta(days=1), T0 - timedelta(hours=1), T0, "revoked"),
    ],
)
def test_status(revoked_at, expires_at, now, status):
    assert record(replace(SPEC, expires_at=expires_at), revoked_at=revoked_at).status(now) == status


def cap_refusal(key: KeyRecord, cost_micros: int):
    """A new call of `cost_micros`, checked against both caps and max_calls."""
    return decisions.cap_refusal(key, total_extra=cost_micros, daily_extra=cost_micros, new_call=True)
