"""Which alert events a change in the ledger causes: pure functions, no I/O, no clock.

The store calls these inside the transaction that moves the money, with the state it read under
its locks and the database's time, and writes what they return to the outbox in that same
transaction. Each event has an identity (which crossing, which cap hit, which revocation): the
outbox keeps one row per identity, so 500 calls racing across 80 % of a cap write one event, and
a crash between the commit and the delivery loses nothing.

Amounts in payloads are US dollars as decimal strings ("80.00"; sub-cent prices keep their
digits, "0.0079"), the same as the vault API's `*_usd` fields: a float would round them.

Budgets (`budget.threshold_crossed`, `budget.cap_hit`) use the same core: `crossings` takes a
subject and its caps, whatever holds them. A budget's counters changing calls `crossings` with
kind `budget.threshold_crossed`, subject `budget` and the budget's id, and its cap refusal calls
`first_refusal_in_window` the same way; nothing else here changes.
"""

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ..money import format_usd
from ..vendors.base import Refusal, RefusalKind
from .base import KeyRecord, KeySpec
from .decisions import KeyCounters, ReservationState
from .times import to_text

THRESHOLD_CROSSED = "key.threshold_crossed"
CAP_HIT = "key.cap_hit"
REVOKED = "key.revoked"
EXPIRED = "key.expired"
RESERVATION_UNKNOWN = "reservation.unknown"
LEDGER_UNAVAILABLE = "ledger.unavailable"
LEDGER_RECOVERED = "ledger.recovered"
KINDS = (THRESHOLD_CROSSED, CAP_HIT, REVOKED, EXPIRED, RESERVATION_UNKNOWN, LEDGER_UNAVAILABLE, LEDGER_RECOVERED)
TEST = "alert.test"  # `keybrake alerts test`: sent at once, never written to the outbox
DEFAULT_THRESHOLDS = (50, 80, 100)
WHOLE_LIFE = "all"  # the window of a total cap: the key's whole life


@dataclass(frozen=True)
class AlertEvent:
    kind: str
    identity: str  # one row per identity in the outbox: the same crossing is never written twice
    occurred_at: datetime  # the database's time of the change that caused it
    data: dict  # the payload's `data`: JSON-ready, amounts as dollar strings
    key_id: str | None = None
    label: str | None = None  # for subscriptions' --label-prefix
    vendor: str | None = None  # for subscriptions' --vendor
    threshold: int | None = None  # for subscriptions' --thresholds

    @property
    def id(self) -> str:
        """The event's id (and every delivery's `webhook-id`): the same identity, the same id."""
        return event_id(self.identity)

    def payload(self) -> str:
        """The body sent on every attempt: Standard Webhooks' {type, timestamp, data}."""
        return json.dumps({"type": self.kind, "timestamp": to_text(self.occurred_at), "data": self.data},
                          separators=(",", ":"))


def event_id(identity: str) -> str:
    return "evt_" + hashlib.sha256(identity.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Rule:
    """What one subscription wants (its URL and secret stay out of the money path)."""

    subscription_id: str
    events: frozenset[str]
    thresholds: frozenset[int]
    label_prefix: str | None = None
    vendor: str | None = None

    def wants(self, event: AlertEvent) -> bool:
        if event.kind not in self.events:
            return False
        if event.threshold is not None and event.threshold not in self.thresholds:
            return False
        if event.key_id is None:  # about the ledger, not a key: the key filters do not apply
            return True
        if self.label_prefix is not None and not (event.label or "").startswith(self.label_prefix):
            return False
        return self.vendor is None or event.vendor == self.vendor


@dataclass(frozen=True)
class Rules:
    """Every active subscription's rule, and what the derivation needs to know of them."""

    rules: tuple[Rule, ...] = ()
    kinds: frozenset[str] = field(default=frozenset())
    thresholds: tuple[int, ...] = ()  # the union, ascending: only these are derived

    @classmethod
    def of(cls, rules: Iterable[Rule]) -> "Rules":
        rules = tuple(rules)
        kinds = frozenset(kind for rule in rules for kind in rule.events)
        thresholds = tuple(sorted({t for rule in rules if THRESHOLD_CROSSED in rule.events for t in rule.thresholds}))
        return cls(rules, kinds, thresholds)

    def subscribers(self, event: AlertEvent) -> list[str]:
        return [rule.subscription_id for rule in self.rules if rule.wants(event)]


# --- the core: a subject's usage against its caps ----------------------------------------------

@dataclass(frozen=True)
class Subject:
    """What an event is about: a key (a budget, later), for the payload and the filters."""

    kind: str  # "key"
    id: str
    label: str | None
    vendor: str | None


@dataclass(frozen=True)
class CapUse:
    """One cap and the money counted against it (spent + reserved) before and after a change."""

    cap: str  # "daily" | "total"
    cap_micros: int
    window: str  # the UTC day for a daily cap, WHOLE_LIFE for a total one
    used_before: int
    spent_after: int
    reserved_after: int

    @property
    def used_after(self) -> int:
        return self.spent_after + self.reserved_after


def crossings(kind: str, subject: Subject, uses: Iterable[CapUse], thresholds: Sequence[int],
              now: datetime) -> list[AlertEvent]:
    """An event for each threshold (a percent of a cap) that the usage went from below to at or
    above. Exact in integers: used * 100 >= threshold * cap."""
    events = []
    for use in uses:
        if use.cap_micros <= 0:
            continue  # a zero cap refuses every paid call: its news is the cap hit
        before, after = use.used_before * 100, use.used_after * 100
        for threshold in thresholds:
            level = threshold * use.cap_micros
            if before < level <= after:
                events.append(AlertEvent(
                    kind, f"{kind}/{subject.id}/{use.cap}/{threshold}/{use.window}", now,
                    {**_subject(subject), "cap": use.cap, "cap_usd": format_usd(use.cap_micros),
                     "threshold_percent": threshold, "used_usd": format_usd(use.used_after),
                     "spent_usd": format_usd(use.spent_after), "reserved_usd": format_usd(use.reserved_after),
                     "window": use.window, "at": to_text(now)},
                    subject.id, subject.label, subject.vendor, threshold))
    return events


def first_refusal_in_window(kind: str, subject: Subject, window: str, data: dict, now: datetime) -> AlertEvent:
    """The cap-hit event of a window: every refusal in it derives the same identity, so the
    outbox keeps the first."""
    return AlertEvent(kind, f"{kind}/{subject.id}/{window}", now,
                      {**_subject(subject), **data, "window": window, "at": to_text(now)},
                      subject.id, subject.label, subject.vendor)


def _subject(subject: Subject) -> dict:
    return {f"{subject.kind}_id": subject.id, "label": subject.label, "vendor": subject.vendor}


def _key_subject(key_id: str, spec: KeySpec) -> Subject:
    return Subject("key", key_id, spec.label, spec.vendor)


# --- keys ----------------------------------------------------------------------------------------

def key_thresholds(key_id: str, spec: KeySpec, before: KeyCounters, after: KeyCounters, thresholds: Sequence[int],
                   now: datetime) -> list[AlertEvent]:
    """The thresholds a key's counters crossed in one change (an admit's hold, a settlement...).

    Called for every change while anyone subscribes: integer comparisons first, objects only for
    the rare change that crosses something."""
    uses = []
    daily, total = spec.daily_cap_micros, spec.total_cap_micros
    if daily is not None and after.day is not None:
        # A change that moved the key into a new day starts that day's usage from 0.
        day_before = before.day_spent + before.day_reserved if before.day == after.day else 0
        if _crosses(day_before, after.day_spent + after.day_reserved, daily, thresholds):
            uses.append(CapUse("daily", daily, after.day, day_before, after.day_spent, after.day_reserved))
    if total is not None and _crosses(before.spent + before.reserved, after.spent + after.reserved, total, thresholds):
        uses.append(CapUse("total", total, WHOLE_LIFE, before.spent + before.reserved, after.spent, after.reserved))
    return crossings(THRESHOLD_CROSSED, _key_subject(key_id, spec), uses, thresholds, now) if uses else []


def _crosses(before: int, after: int, cap: int, thresholds: Sequence[int]) -> bool:
    if after <= before:
        return False
    before, after = before * 100, after * 100
    return any(before < threshold * cap <= after for threshold in thresholds)


def key_cap_hit(key: KeyRecord, refusal: Refusal, window: str, now: datetime) -> AlertEvent | None:
    """The first cap refusal of a key in a (daily) window; None for a refusal that is no cap hit."""
    if not refusal.kind.is_cap_hit:
        return None
    spec = key.spec
    cap = _refused_cap(key, refusal)
    data: dict = {"cap": cap, "max_calls": spec.max_calls, "calls": key.calls,
                  "daily_cap_usd": _usd(spec.daily_cap_micros), "total_cap_usd": _usd(spec.total_cap_micros),
                  "spent_usd": format_usd(key.spent_micros), "reserved_usd": format_usd(key.reserved_micros),
                  "today_spent_usd": format_usd(key.today_spent_micros),
                  "today_reserved_usd": format_usd(key.today_reserved_micros),
                  "cap_usd": _usd(spec.daily_cap_micros if cap == "daily" else
                                  spec.total_cap_micros if cap == "total" else None),
                  "message": refusal.message}
    return first_refusal_in_window(CAP_HIT, _key_subject(key.key_id, spec), window, data, now)


def _refused_cap(key: KeyRecord, refusal: Refusal) -> str:
    """Which cap refused: decisions.cap_refusal names it in its message ("daily cap $..")."""
    if refusal.kind is RefusalKind.MAX_CALLS_EXCEEDED:
        return "calls"
    for cap in ("daily", "total"):
        if f"{cap} cap $" in refusal.message:
            return cap
    return "daily" if key.spec.daily_cap_micros is not None else "total"


def key_revoked(key: KeyRecord, now: datetime) -> AlertEvent:
    return AlertEvent(REVOKED, f"{REVOKED}/{key.key_id}", now, {**_key_data(key), "at": to_text(now)},
                      key.key_id, key.spec.label, key.spec.vendor)


def key_expired(key: KeyRecord, now: datetime) -> AlertEvent | None:
    """A key that expired holding money: its holds still count until their calls answer or are
    reconciled. None for one that expired with nothing reserved."""
    if key.reserved_micros <= 0:
        return None
    return AlertEvent(EXPIRED, f"{EXPIRED}/{key.key_id}", now,
                      {**_key_data(key), "expired_at": to_text(key.spec.expires_at), "at": to_text(now)},
                      key.key_id, key.spec.label, key.spec.vendor)


def _key_data(key: KeyRecord) -> dict:
    spec = key.spec
    return {"key_id": key.key_id, "label": spec.label, "vendor": spec.vendor,
            "daily_cap_usd": _usd(spec.daily_cap_micros), "total_cap_usd": _usd(spec.total_cap_micros),
            "spent_usd": format_usd(key.spent_micros), "reserved_usd": format_usd(key.reserved_micros),
            "unknown_usd": format_usd(key.unknown_micros), "calls": key.calls}


# --- reservations and the ledger -----------------------------------------------------------------

UNKNOWN_ANSWER = "the vendor's answer did not say whether money moved (a 5xx, or the connection died)"
RUN_GONE = "the proxy run that made it stopped before its call answered"


def reservation_unknown(reservation: ReservationState, key_id: str, spec: KeySpec, reason: str,
                        now: datetime) -> AlertEvent:
    """A hold whose outcome nobody will report: it stays counted until `keybrake reconcile`."""
    return AlertEvent(
        RESERVATION_UNKNOWN, f"{RESERVATION_UNKNOWN}/{reservation.id}", now,
        {"reservation_id": reservation.id, "key_id": key_id, "label": spec.label, "vendor": spec.vendor,
         "endpoint": reservation.endpoint, "reserved_usd": format_usd(reservation.reserved),
         "reserved_at": to_text(reservation.created_at), "reason": reason,
         "daily_cap_usd": _usd(spec.daily_cap_micros), "total_cap_usd": _usd(spec.total_cap_micros),
         "at": to_text(now)},
        key_id, spec.label, spec.vendor)


def became_unknown(before: ReservationState, state_after: str) -> bool:
    return state_after == "unknown" and before.state != "unknown"


def ledger_outage(run_id: str, host: str, started: datetime, ended: datetime, reason: str) -> list[AlertEvent]:
    """An outage as one proxy run saw it. The ledger cannot be written while it is down, so both
    events are written when it answers again, with the outage's start and end by that run's clock."""
    data = {"run_id": run_id, "host": host, "started_at": to_text(started), "ended_at": to_text(ended),
            "seconds": round((ended - started).total_seconds(), 3), "reason": reason}
    window = f"{run_id}/{to_text(started)}"
    return [AlertEvent(LEDGER_UNAVAILABLE, f"{LEDGER_UNAVAILABLE}/{window}", started, data),
            AlertEvent(LEDGER_RECOVERED, f"{LEDGER_RECOVERED}/{window}", ended, data)]


def _usd(micros: int | None) -> str | None:
    return None if micros is None else format_usd(micros)
