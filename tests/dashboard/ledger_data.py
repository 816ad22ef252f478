"""A ledger with a few days of runs, written through the ledger's own admit and settle calls.

The database's clock is moved back while the calls are made, so the charts have days of
history; afterwards it follows real time again, as a proxy's ledger does. Between 22:00 and
10:00 UTC it follows real time a few hours behind, at 20:00 of a day: today's calls go back
nine hours, and all of them must fall on the day the overview calls today.
"""

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta

from keybrake_addon.api.tokens import AdminTokens
from keybrake_addon.ledger.base import AdmitRequest, CallFacts, KeySpec, Resolution, SettleRequest
from keybrake_addon.ledger.store import SqlLedger
from keybrake_addon.ledger.times import utc_now
from keybrake_addon.vendors.base import CostEstimate

USD = 1_000_000
STRIPE_CALL = ("POST", "/v1/payment_intents")
TWILIO_CALL = ("POST", "/2010-04-01/Accounts/AC123/Messages.json")
RESEND_CALL = ("POST", "/emails")


class SettableClock:
    """The ledger's clock: real time moved by `offset`, unless a moment is set."""

    def __init__(self) -> None:
        self.moment: datetime | None = None
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return self.moment or utc_now() + self.offset


EARLIEST_HOUR, LATEST_HOUR = 10, 21
EVENING = time(20, tzinfo=UTC)


def offset_to_a_whole_day(real: datetime) -> timedelta:
    """How far back to move the clock so that today holds the last nine hours and the next two."""
    if EARLIEST_HOUR <= real.hour <= LATEST_HOUR:
        return timedelta(0)
    day = real.date() if real.hour > LATEST_HOUR else real.date() - timedelta(days=1)
    return datetime.combine(day, EVENING) - real


@dataclass
class Facts:
    """What the tests check the pages against, as the ledger counted it."""

    admin_token: str = ""
    admin_token_id: str = ""
    billing_runs: list[str] = field(default_factory=list)
    spent_by_label: dict[str, int] = field(default_factory=dict)
    audit_rows: int = 0
    near_cap_key: str = ""
    revocable_key: str = ""
    unknown_key: str = ""


def spec(vendor: str, label: str | None, *, total: int | None = None, daily: int | None = None) -> KeySpec:
    method, path = {"stripe": STRIPE_CALL, "twilio": TWILIO_CALL, "resend": RESEND_CALL}[vendor]
    return KeySpec(vendor=vendor, secret_name="default", label=label, daily_cap_micros=daily, total_cap_micros=total,
                   max_calls=None, allowlist=(f"{method} {path}",), allow_all=False, allow_unpriced=False,
                   expires_at=None)


class Writer:
    def __init__(self, ledger: SqlLedger, clock: SettableClock, facts: Facts, key_prefix: str = "kbk_test") -> None:
        self.ledger, self.clock, self.facts, self.key_prefix = ledger, clock, facts, key_prefix
        self._keys = 0
        self._calls = 0

    def key(self, vendor: str, label: str | None, **caps) -> tuple[str, str]:
        self._keys += 1
        key_id = f"{self.key_prefix}{self._keys:03d}"
        key_hash = hashlib.sha256(key_id.encode()).hexdigest()
        self.ledger.create_key(key_id, key_hash, spec(vendor, label, **caps))
        return key_id, key_hash

    def call(self, key_hash: str, vendor: str, usd_micros: int, *, outcome: Resolution = Resolution.SETTLE,
             actual: int | None = None, label: str | None = None) -> bool:
        """One call: admitted, then settled as `outcome`. Returns whether it was allowed."""
        self._calls += 1
        method, path = {"stripe": STRIPE_CALL, "twilio": TWILIO_CALL, "resend": RESEND_CALL}[vendor]
        call = CallFacts(vendor, method, path, f"idem-{self._calls}", self.clock())
        admission = self.ledger.admit(AdmitRequest(key_hash, call, CostEstimate(usd_micros=usd_micros)))
        self.facts.audit_rows += 1
        if not admission.allowed:
            return False
        amount = usd_micros if actual is None else actual
        self.ledger.settle(SettleRequest(
            admission.audit_id, admission.reservation_id, outcome,
            amount if outcome is Resolution.SETTLE else None, 200 if outcome is Resolution.SETTLE else 502,
            (f"pi_{self._calls:05d}",) if outcome is Resolution.SETTLE else (), f"req_{self._calls}",
            amount // 10_000 if vendor == "stripe" else None, "usd" if vendor == "stripe" else None, False,
            180.0 + self._calls % 7 * 37))
        if outcome is Resolution.SETTLE and label is not None:
            self.facts.spent_by_label[label] = self.facts.spent_by_label.get(label, 0) + amount
        return True


def populate(ledger: SqlLedger, clock: SettableClock) -> Facts:
    facts = Facts()
    write = Writer(ledger, clock, facts)
    for vendor in ("stripe", "twilio", "resend"):
        ledger.put_secret(vendor, "default", b"n" * 12, b"sealed", "fp", "AC123" if vendor == "twilio" else None)
    clock.offset = offset_to_a_whole_day(utc_now())
    now = clock().replace(minute=0, second=0, microsecond=0)

    # Four runs of the billing agent over the last five days, each with a $400 total cap.
    for run in range(4):
        label = f"trigger.dev/billing-agent/run_{1001 + run}"
        facts.billing_runs.append(label)
        clock.moment = now - timedelta(days=5 - run, hours=3)
        _, key_hash = write.key("stripe", label, total=400 * USD)
        for charge in range(6 + run):
            clock.moment += timedelta(minutes=17 * charge + 5)
            write.call(key_hash, "stripe", (12 + 3 * charge + run) * USD, label=label)

    # A customer charge run that went over: near its $50 cap, then refused at it.
    label = "trigger.dev/charge-customer/run_77"
    clock.moment = now - timedelta(hours=9)
    facts.near_cap_key, key_hash = write.key("stripe", label, total=50 * USD)
    for _ in range(3):
        clock.moment += timedelta(minutes=40)
        write.call(key_hash, "stripe", 15 * USD, label=label)
    write.call(key_hash, "stripe", 9 * USD, label=label)  # refused: 45 spent, 9 more passes 50

    # Nightly SMS with a daily cap, and one call whose outcome was lost (a 502: unknown).
    label = "cron/nightly-sms/2026-12-01"
    clock.moment = now - timedelta(hours=2)
    facts.unknown_key, key_hash = write.key("twilio", label, daily=5 * USD)
    for _ in range(12):
        clock.moment += timedelta(minutes=4)
        write.call(key_hash, "twilio", 7_900, label=label)
    write.call(key_hash, "twilio", 7_900, outcome=Resolution.UNKNOWN)

    # Receipts by email, issued without a label, and a key kept for the revoke test.
    clock.moment = now - timedelta(hours=1)
    _, key_hash = write.key("resend", None, total=10 * USD)
    for _ in range(5):
        write.call(key_hash, "resend", 900)
    label = "trigger.dev/send-receipts/run_5"
    facts.revocable_key, key_hash = write.key("stripe", label, total=100 * USD)
    write.call(key_hash, "stripe", 5 * USD, label=label)

    clock.moment = None
    _, facts.admin_token = AdminTokens(ledger).create("dashboard tests")
    facts.admin_token_id = AdminTokens(ledger).list()[-1].token_id
    return facts


def as_of(ledger: SqlLedger) -> datetime:
    with ledger.database.reading() as tx:
        return tx.now().astimezone(UTC)
