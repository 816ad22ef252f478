"""The ledger contract suite runs once per backend: the embedded SQLite file and PostgreSQL."""

from datetime import UTC, datetime, timedelta

import pytest

from keybrake_addon.ledger.base import AdmitRequest, CallFacts, KeySpec, SettleRequest
from keybrake_addon.ledger.postgres import PostgresLedger
from keybrake_addon.ledger.sqlite import SqliteLedger
from keybrake_addon.vendors.base import CostEstimate

USD = 1_000_000
KEY_HASH = "h" * 64
OTHER_HASH = "o" * 64


class Clock:
    """The database's clock, as a test decides it."""

    def __init__(self, now: datetime = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def set(self, moment: datetime) -> None:
        self.now = moment

    def advance(self, **delta) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["sqlite", "postgresql"])
def open_ledger(request, tmp_path, clock):
    """Opens ledgers on one database of the backend under test (several: several replicas)."""
    opened = []
    if request.param == "sqlite":
        def make(clock_of=clock):
            opened.append(SqliteLedger(tmp_path / "ledger.db", clock=clock_of))
            return opened[-1]
    else:
        url = request.getfixturevalue("pg_url")

        def make(clock_of=clock):
            opened.append(PostgresLedger(url, where="test", clock=clock_of))
            return opened[-1]
    yield make
    for ledger in opened:
        ledger.close()


def spec(*, daily=None, total=None, max_calls=None, vendor="stripe", allow_unpriced=False, expires_at=None,
         label="run") -> KeySpec:
    return KeySpec(vendor=vendor, secret_name="default", label=label, daily_cap_micros=daily, total_cap_micros=total,
                   max_calls=max_calls, allowlist=("POST /v1/payment_intents/**", "POST /v1/refunds",
                                                   "GET /v1/payment_intents/*"),
                   allow_all=False, allow_unpriced=allow_unpriced, expires_at=expires_at)


@pytest.fixture
def ledger(open_ledger):
    """A ledger holding one Stripe secret and key kbk_test (caps set by the test with `with_key`)."""
    made = open_ledger()
    made.put_secret("stripe", "default", b"n" * 12, b"sealed", "fp", None)
    return made


def with_key(ledger, key_id="kbk_test", key_hash=KEY_HASH, **caps):
    ledger.create_key(key_id, key_hash, spec(**caps))
    return ledger


def admit(ledger, usd, *, idem=None, at=None, path="/v1/payment_intents", estimate=None, key_hash=KEY_HASH,
          method="POST", run_id=None):
    call = CallFacts("stripe", method, path, idem, at or datetime(2000, 1, 1, tzinfo=UTC))
    return ledger.admit(AdmitRequest(key_hash, call, estimate or CostEstimate(usd_micros=int(usd * USD)),
                                     run_id=run_id))


def settle(ledger, admission, resolution, actual_usd=None, object_id=None, *, replayed=False, status=200):
    return ledger.settle(SettleRequest(
        admission.audit_id, admission.reservation_id, resolution,
        None if actual_usd is None else int(actual_usd * USD), status, (object_id,) if object_id else (),
        None, None, None, replayed, 1.0, opened=admission.opened))


def money(ledger, key_id="kbk_test") -> tuple[float, float]:
    key = ledger.get_key(key_id)
    return key.spent_micros / USD, key.reserved_micros / USD
