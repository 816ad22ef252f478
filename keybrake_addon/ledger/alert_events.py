"""Which alert events a change in the ledger causes: pure functions, no I/O, no clock.

The store calls these inside the transaction that moves the money, with the state it read under
its locks and the database's time, and writes what they return to the outbox in that same
transaction. Each event has an identity (which crossing, which cap hit, which revocation): the
outbox keeps one row per identity, so 500 calls racing across 80 % of a cap write one event, and
a crash between the commit and the delivery loses nothing.

Amounts in payloads are US dollars as decimal strings ("80.00"; sub-cent prices keep their
digits, "0.0079"), the same as the vault API's `*_usd` fields: a float would round them.

Budgets (`budget.threshold_crossed`, `budget.cap_hit`) use the same core: `crossings` and
`first_refusal_in_window` take a subject (a key or a budget) and its caps, whatever holds them. A
budget event names no key, so a subscription's key filters (--label-prefix, --vendor) do not
apply to it: a budget spans labels and vendors. A refusal by a budget's cap is that budget's cap
hit, not the key's: the key's own caps were not what refused it.
"""

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ..money import format_usd
from ..vendors.base import Refusal, RefusalKind
from .base import KeyRecord, KeySpec
from .decisions import BudgetState, KeyCounters, ReservationState
from .times import to_text

THRESHOLD_CROSSED = "key.threshold_crossed"
CAP_HIT = "key.cap_hit"
REVOKED = "key.revoked"
EXPIRED = "key.expired"
BUDGET_THRESHOLD_CROSSED = "budget.threshold_crossed"
BUDGET_CAP_HIT = "budget.cap_hit"
RESERVATION_UNKNOWN = "reservation.unknown"
LEDGER_UNAVAILABLE = "ledger.unavailable"
LEDGER_RECOVERED = "ledger.recovered"
KINDS = (THRESHOLD_CROSSED, CAP_HIT, REVOKED, EXPIRED, BUDGET_THRESHOLD_CROSSED, BUDGET_CAP_HIT, RESERVATION_UNKNOWN,
         LEDGER_UNAVAILABLE, LEDGER_RECOVERED)
TEST = "alert.test"  # `keybrake alerts test`: sent at once, never written to the outbox
DEFAULT_THRESHOLDS = (50, 80, 100)
WHOLE_LIFE = "all"  # the window of a total cap: the key's whole life


@dataclass(frozen=True)
class AlertEvent:
    kind: str
    identity: str  # one row per identity in the outbox: the same crossing is never written twice
    occurred_at: datetime  # the database's time of the change that caused it
    data: dict  # the payload's `data`: JSON-ready, amounts as dollar strings
    key_id: str | None = None  # None for an event about a budget or the ledger: the key filters skip it
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
        if event.key_id is None:  # about a budget or the ledger, not a key: the key filters do not apply
            return True
        if self.label_prefix is not None and not (event.label or "").startswith(self.label_prefix):
            return False
        return self.vendor is None or event.vendor == self.vendor


@dataclass(frozen=True)
class Rules:
    """Every active subscription's rule, and what the derivation needs to know of them."""

    rules: tuple[Rule, ...] = ()
    kinds: frozenset[str] = field(default=frozenset())
    thresholds: tuple[int, ...] = ()  # the union for keys, ascending: only these are derived
    budget_thresholds: tuple[int, ...] = ()  # the same for budgets

    @classmethod
    def of(cls, rules: Iterable[Rule]) -> "Rules":
        rules = tuple(rules)
        kinds = frozenset(kind for rule in rules for kind in rule.events)

        def wanted(kind: str) -> tuple[int, ...]:
            return tuple(sorted({t for rule in rules if kind in rule.events for t in rule.thresholds}))

        return cls(rules, kinds, wanted(THRESHOLD_CROSSED), wanted(BUDGET_THRESHOLD_CROSSED))

    def subscribers(self, event: AlertEvent) -> list[str]:
        return [rule.subscription_id for rule in self.rules if rule.wants(event)]


# --- the core: a subject's usage against its caps ----------------------------------------------

@dataclass(frozen=True)
class Subject:
    """What an event is about: a key or a budget, as its payload names it and the filters see it."""

    kind: str  # "key" | "budget"
    id: str  # the key's id, or the budget's name
    label: str | None = None  # a key's (--label-prefix); a budget has none
    vendor: str | None = None  # a key's (--vendor); a budget spans vendors
    ancestors: tuple[str, ...] = ()  # a budget's, nearest first

    @property
    def key_id(self) -> str | None:
        return self.id if self.kind == "key" else None

    def named(self) -> dict:
        if self.kind == "budget":
            return {"budget": self.id, "parent": self.ancestors[0] if self.ancestors else None,
                    "ancestors": list(self.ancestors)}
        return {"key_id": self.id, "label": self.label, "vendor": self.vendor}


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
                    {**subject.named(), "cap": use.cap, "cap_usd": format_usd(use.cap_micros),
                     "threshold_percent": threshold, "used_usd": format_usd(use.used_after),
                     "spent_usd": format_usd(use.spent_after), "reserved_usd": format_usd(use.reserved_after),
                     "window": use.window, "at": to_text(now)},
                    subject.key_id, subject.label, subject.vendor, threshold))
    return events


def first_refusal_in_window(kind: str, subject: Subject, window: str, data: dict, now: datetime) -> AlertEvent:
    """The cap-hit event of a window: every refusal in it derives the same identity, so the
    outbox keeps the first."""
    return AlertEvent(kind, f"{kind}/{subject.id}/{window}", now,
                      {**subject.named(), **data, "window": window, "at": to_text(now)},
                      subject.key_id, subject.label, subject.vendor)


def _key_subject(key_id: str, spec: KeySpec) -> Subject:
    return Subject("key", key_id, spec.label, spec.vendor)


# --- keys ----------------------------------------------------------------------------------------

def key_thresholds(key_id: str, spec: KeySpec, before: KeyCounters, after: KeyCounters, thresholds: Sequence[int],
                   now: datetime) -> list[AlertEvent]:
    """The thresholds a key's counters crossed in one change (an admit's hold, a settlement...).

    Called for every change while anyone subscribes: integer comparisons first, objects only for
    the rare change that crosses something."""
    uses = cap_uses(spec.daily_cap_micros, spec.total_cap_micros, before, after, thresholds)
    return crossings(THRESHOLD_CROSSED, _key_subject(key_id, spec), uses, thresholds, now) if uses else []


def cap_uses(daily: int | None, total: int | None, before: KeyCounters, after: KeyCounters,
             thresholds: Sequence[int]) -> list[CapUse]:
    """The caps (of a key or a budget: the same counters) whose usage rose across a threshold."""
    uses = []
    if daily is not None and after.day is not None:
        # A change that moved the counters into a new day starts that day's usage from 0.
        day_before = before.day_spent + before.day_reserved if before.day == after.day else 0
        if _crosses(day_before, after.day_spent + after.day_reserved, daily, thresholds):
            uses.append(CapUse("daily", daily, after.day, day_before, after.day_spent, after.day_reserved))
    if total is not None and _crosses(before.spent + before.reserved, after.spent + after.reserved, total, thresholds):
        uses.append(CapUse("total", total, WHOLE_LIFE, before.spent + before.reserved, after.spent, after.reserved))
    return uses


def _crosses(before: int, after: int, cap: int, thresholds: Sequence[int]) -> bool:
    if after <= before:
        return False
    before, after = before * 100, after * 100
    return any(before < threshold * cap <= after for threshold in thresholds)


def key_cap_hit(key: KeyRecord, refusal: Refusal, window: str, now: datetime) -> AlertEvent | None:
    """The first cap refusal of a key in a (daily) window; None for a refusal that is no cap hit,
    or one by a budget's cap (that is the budget's cap hit: see budget_cap_hit)."""
    if not refusal.kind.is_cap_hit or budget_refused(refusal) is not None:
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
    if refusal.kind is RefusalKind.MAX_CALLS_EXCEEDED:
        return "calls"
    return _named_cap(refusal) or ("daily" if key.spec.daily_cap_micros is not None else "total")


def _named_cap(refusal: Refusal) -> str | None:
    """Which dollar cap refused: decisions names it at the end of its message ("...: daily cap
    $100.00, spent ..."). The last mention wins: a label earlier in the message may say anything."""
    found = {cap: refusal.message.rfind(f"{cap} cap $") for cap in ("daily", "total")}
    cap = max(found, key=found.__getitem__)
    return cap if found[cap] >= 0 else None


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


# --- budgets -------------------------------------------------------------------------------------

def budget_thresholds(before: BudgetState, after: BudgetState, ancestors: Sequence[str], thresholds: Sequence[int],
                      now: datetime) -> list[AlertEvent]:
    """The thresholds a budget's counters crossed in one change: one event per budget, cap,
    threshold and window, like a key's. `ancestors`: the budget's, nearest first."""
    uses = cap_uses(after.daily_cap_micros, after.total_cap_micros, before.counters, after.counters, thresholds)
    return crossings(BUDGET_THRESHOLD_CROSSED, _budget_subject(after.name, ancestors), uses, thresholds,
                     now) if uses else []


def budget_refused(refusal: Refusal) -> str | None:
    """The budget whose cap refused (decisions names it in `cap`: "budget:NAME"); None for a key's."""
    if refusal.kind.is_cap_hit and refusal.cap and refusal.cap.startswith("budget:"):
        return refusal.cap.removeprefix("budget:")
    return None


def budget_cap_hit(budget: BudgetState, ancestors: Sequence[str], key: KeyRecord, refusal: Refusal, window: str,
                   now: datetime) -> AlertEvent:
    """The first refusal by a budget's cap in a (daily) window, whichever of its keys made it.
    The key it refused is in the payload, as `refused_key_id`: the subject is the budget."""
    c = budget.counters.in_window(window)
    today = c.day == window
    cap = _named_cap(refusal) or ("daily" if budget.daily_cap_micros is not None else "total")
    data = {"cap": cap, "cap_usd": _usd(budget.daily_cap_micros if cap == "daily" else budget.total_cap_micros),
            "daily_cap_usd": _usd(budget.daily_cap_micros), "total_cap_usd": _usd(budget.total_cap_micros),
            "spent_usd": format_usd(c.spent), "reserved_usd": format_usd(c.reserved),
            "today_spent_usd": format_usd(c.day_spent if today else 0),
            "today_reserved_usd": format_usd(c.day_reserved if today else 0),
            "refused_key_id": key.key_id, "refused_label": key.spec.label, "refused_vendor": key.spec.vendor,
            "message": refusal.message}
    return first_refusal_in_window(BUDGET_CAP_HIT, _budget_subject(budget.name, ancestors), window, data, now)


def ancestors_of(budgets: Mapping[str, BudgetState], name: str) -> tuple[str, ...]:
    """A budget's ancestors, nearest first, from the budgets a batch locked (every ancestor of
    each budget it read). Bounded: a cycle cannot be made, but a loop here must not spin."""
    found: list[str] = []
    parent = budgets[name].parent
    while parent is not None and parent in budgets and len(found) < len(budgets):
        found.append(parent)
        parent = budgets[parent].parent
    return tuple(found)


def _budget_subject(name: str, ancestors: Sequence[str]) -> Subject:
    return Subject("budget", name, ancestors=tuple(ancestors))


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
