"""The alert outbox in the ledger: subscriptions, events and their deliveries, in SQL for both backends.

Events go in with the money: the store's batch collects what `alert_events` derives while it
decides, and `BatchAlerts.write` inserts it in the same transaction, `ON CONFLICT DO NOTHING` on
the event's identity. Nothing is sent from there; a deliverer (alerts/deliverer.py) claims due
deliveries later, off the vendor-call path.

Which events are derived depends on the active subscriptions. The money path reads them from a
per-process cache refreshed at most every RULES_TTL_S, inside its own transaction (one small
read per few seconds): a subscription added now sees events from at most that long after.
"""

import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..vendors.base import Refusal
from . import alert_events
from .alert_events import AlertEvent, Rule, Rules
from .base import KeyRecord
from .database import Row, Tx, placeholders
from .decisions import BudgetState, KeyCounters, KeyState, ReservationState, window_of
from .times import from_text, to_text

RULES_TTL_S = 5.0
RETRY_FIRST_S = 30  # the first retry after this; each next one waits twice as long...
RETRY_LONGEST_S = 3600  # ...up to an hour
RETRY_FOR = timedelta(hours=24)  # then the delivery is `failed` (retry it by hand)
LEASE = timedelta(minutes=2)  # a claimed delivery is another deliverer's again after this
RUN_GONE_AFTER = timedelta(seconds=10)  # as the store's: a run silent this long is dead
EXPIRED_LOOKBACK = timedelta(days=1)  # the first sweep of a ledger looks this far back
LISTED_DELIVERIES = 200


# --- the money path: rules, and the batch's collector ----------------------------------------------

class RulesCache:
    """The active subscriptions' rules, read at most every RULES_TTL_S (one per SqlLedger)."""

    def __init__(self, ttl_s: float = RULES_TTL_S) -> None:
        self._ttl_s = ttl_s
        self._rules = Rules()
        self._read_at = float("-inf")

    def current(self, tx: Tx) -> Rules:
        if time.monotonic() - self._read_at >= self._ttl_s:
            self._rules = read_rules(tx)
            self._read_at = time.monotonic()
        return self._rules

    def forget(self) -> None:
        """Read again at the next use (this process changed the subscriptions)."""
        self._read_at = float("-inf")

    def collector(self, tx: Tx) -> "BatchAlerts":
        return BatchAlerts(self.current(tx))


def read_rules(tx: Tx) -> Rules:
    rows = tx.rows("SELECT id, events, thresholds, label_prefix, vendor FROM alert_subscriptions "
                   "WHERE removed_at IS NULL ORDER BY id")
    return Rules.of(Rule(r["id"], frozenset(json.loads(r["events"])), frozenset(json.loads(r["thresholds"])),
                         r["label_prefix"], r["vendor"]) for r in rows)


class BatchAlerts:
    """What one transaction's changes cause. Each hook costs a comparison when nobody subscribes."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.events: dict[str, AlertEvent] = {}  # by identity: a batch may derive one twice

    def counters_changed(self, state: KeyState, counters: KeyCounters, now: datetime) -> None:
        if self.rules.thresholds:
            self._add(alert_events.key_thresholds(state.key_id, state.spec, state.counters, counters,
                                                  self.rules.thresholds, now))

    def budgets_changed(self, budgets: Mapping[str, BudgetState], changed: Sequence[BudgetState],
                        now: datetime) -> None:
        """`budgets`: every budget the transaction locked, as they were before `changed`."""
        if self.rules.budget_thresholds:
            for after in changed:
                self._add(alert_events.budget_thresholds(
                    budgets[after.name], after, alert_events.ancestors_of(budgets, after.name),
                    self.rules.budget_thresholds, now))

    def refused(self, key: KeyRecord | None, refusal: Refusal, now: datetime,
                budgets: Mapping[str, BudgetState] | None = None) -> None:
        """A refusal by a key's cap is the key's cap hit; by a budget's cap, the budget's."""
        if key is None or not refusal.kind.is_cap_hit:
            return
        budget = alert_events.budget_refused(refusal)
        if budget is None and alert_events.CAP_HIT in self.rules.kinds:
            self._add([alert_events.key_cap_hit(key, refusal, window_of(now), now)])
        elif budget is not None and alert_events.BUDGET_CAP_HIT in self.rules.kinds and budgets and budget in budgets:
            self._add([alert_events.budget_cap_hit(budgets[budget], alert_events.ancestors_of(budgets, budget), key,
                                                   refusal, window_of(now), now)])

    def settled(self, before: ReservationState, state_after: str, key: KeyState, now: datetime) -> None:
        if alert_events.RESERVATION_UNKNOWN in self.rules.kinds and alert_events.became_unknown(before, state_after):
            self._add([alert_events.reservation_unknown(before, key.key_id, key.spec, alert_events.UNKNOWN_ANSWER,
                                                        now)])

    def _add(self, events: Sequence[AlertEvent]) -> None:
        for event in events:
            self.events.setdefault(event.identity, event)

    def write(self, tx: Tx, now: datetime) -> None:
        if self.events:
            write_events(tx, self.rules, list(self.events.values()), now)


def write_events(tx: Tx, rules: Rules, events: Sequence[AlertEvent], now: datetime) -> int:
    """Insert the events someone subscribes to, and a delivery per subscriber. An identity already
    in the outbox is not written again (nor delivered again): returns how many were new."""
    new = []
    for event in events:
        subscribers = rules.subscribers(event)
        # Events are rare (a crossing, a cap hit), so one statement each: its count says whether it is new.
        if subscribers and tx.run(
                "INSERT INTO alert_events (id, kind, identity, key_id, occurred_at, payload) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (identity) DO NOTHING",
                (event.id, event.kind, event.identity, event.key_id, to_text(event.occurred_at), event.payload())):
            # Due at once, and first attempts go out in the order the events happened.
            due = to_text(min(event.occurred_at, now))
            new += [(event.id, subscription_id, due) for subscription_id in subscribers]
    if new:
        now_text, give_up = to_text(now), to_text(now + RETRY_FOR)
        tx.run_many("INSERT INTO alert_deliveries (id, event_id, subscription_id, state, created_at, next_attempt_at, "
                    "give_up_at) VALUES (?, ?, ?, 'pending', ?, ?, ?) ON CONFLICT (event_id, subscription_id) DO NOTHING",
                    [(delivery_id(e, s), e, s, now_text, due, give_up) for e, s, due in new])
    return len({event_id for event_id, _, _ in new})


def delivery_id(event_id: str, subscription_id: str) -> str:
    return "dlv_" + alert_events.event_id(f"{event_id}/{subscription_id}")[4:20]


# --- events outside the gate's batches -----------------------------------------------------------

def key_revoked(tx: Tx, key_ids: Sequence[str], now: datetime) -> None:
    """In the revoking transaction: a key.revoked event for each key it revoked (revoked_at is
    `now`; one revoked before stays as it was, and says nothing new)."""
    if not key_ids:
        return
    rules = read_rules(tx)
    if alert_events.REVOKED in rules.kinds:
        write_events(tx, rules, [alert_events.key_revoked(key, now) for key in _key_records(tx, key_ids, now)
                                 if key.revoked_at == now], now)


def _key_records(tx: Tx, key_ids: Sequence[str], now: datetime) -> list[KeyRecord]:
    from .store import _KEY_COLUMNS, _key_state  # the key row's one reading

    if not key_ids:
        return []
    rows = tx.rows(f"SELECT {_KEY_COLUMNS} FROM vault_keys k WHERE k.key_id IN {placeholders(key_ids)} "
                   "ORDER BY k.key_id", list(key_ids))
    return [_key_state(row).record(window_of(now)) for row in rows]


class Sweeper:
    """The housekeeper's rounds: keys that expired holding money, and pending holds of proxy runs
    that are gone (they became unknown without any transaction saying so). Each looks with a read
    first and writes only what it found; the outbox's identities make a second find (another
    replica's, or after a restart) a no-op."""

    def __init__(self, ledger) -> None:
        self._ledger = ledger
        self._expired_until: datetime | None = None  # keys that expired up to here were looked at

    def sweep(self) -> int:
        with self._ledger.database.reading() as tx:
            rules, now = read_rules(tx), tx.now()
            since = self._expired_until or now - EXPIRED_LOOKBACK
            expired = [r["key_id"] for r in tx.rows(
                "SELECT key_id FROM vault_keys WHERE expires_at > ? AND expires_at <= ? AND reserved_micros > 0",
                (to_text(since), to_text(now)))] if alert_events.EXPIRED in rules.kinds else []
            runs = [r["run_id"] for r in tx.rows(
                "SELECT run_id FROM proxy_runs WHERE (stopped_at IS NOT NULL OR heartbeat_at < ?) "
                "AND run_id NOT IN (SELECT run_id FROM alert_swept_runs)", (to_text(now - RUN_GONE_AFTER),))
            ] if alert_events.RESERVATION_UNKNOWN in rules.kinds else []
        found = 0
        if expired or runs:
            with self._ledger.database.transaction() as tx:
                found += self._expired(tx, rules, expired, tx.now())
                found += self._gone_runs(tx, rules, runs, tx.now())
        self._expired_until = now
        return found

    @staticmethod
    def _expired(tx: Tx, rules: Rules, key_ids: list[str], now: datetime) -> int:
        events = [e for e in (alert_events.key_expired(k, now) for k in _key_records(tx, key_ids, now)) if e]
        return write_events(tx, rules, events, now)

    @staticmethod
    def _gone_runs(tx: Tx, rules: Rules, runs: list[str], now: datetime) -> int:
        from .store import _RESERVATION_COLUMNS, _reservation

        if not runs:
            return 0
        # No index on run_id (it would cost every call a write): one scan per round that finds runs gone.
        held = [_reservation(row) for row in tx.rows(
            f"SELECT {_RESERVATION_COLUMNS} FROM reservations WHERE state = 'pending' AND run_id IN "
            f"{placeholders(runs)} ORDER BY id", runs)]
        specs = {key.key_id: key.spec for key in _key_records(tx, sorted({r.key_id for r in held}), now)}
        events = [alert_events.reservation_unknown(r, r.key_id, specs[r.key_id], alert_events.RUN_GONE, now)
                  for r in held if r.key_id in specs]
        written = write_events(tx, rules, events, now)
        tx.run_many("INSERT INTO alert_swept_runs (run_id, swept_at) VALUES (?, ?) ON CONFLICT (run_id) DO NOTHING",
                    [(run, to_text(now)) for run in runs])
        return written


def record_outage(ledger, run_id: str, host: str, started: datetime, ended: datetime, reason: str) -> None:
    with ledger.database.transaction() as tx:
        rules = read_rules(tx)
        write_events(tx, rules, alert_events.ledger_outage(run_id, host, started, ended, reason), tx.now())


# --- subscriptions -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Subscription:
    id: str
    url: str
    events: tuple[str, ...]
    thresholds: tuple[int, ...]
    label_prefix: str | None
    vendor: str | None
    format: str
    allow_private: bool
    created_at: datetime
    removed_at: datetime | None
    secret_nonce: bytes
    secret_ciphertext: bytes
    url_nonce: bytes | None = None  # the full URL, sealed; None for a row from before (`url` is then whole)
    url_ciphertext: bytes | None = None


_SUBSCRIPTION_COLUMNS = ("id, url, events, thresholds, label_prefix, vendor, format, allow_private, created_at, "
                         "removed_at, secret_nonce, secret_ciphertext, url_nonce, url_ciphertext")


def add_subscription(ledger, subscription_id: str, shown_url: str, events: Sequence[str], thresholds: Sequence[int],
                     label_prefix: str | None, vendor: str | None, fmt: str, allow_private: bool,
                     nonce: bytes, ciphertext: bytes, url_nonce: bytes, url_ciphertext: bytes) -> Subscription:
    with ledger.database.transaction() as tx:
        tx.run(f"INSERT INTO alert_subscriptions ({_SUBSCRIPTION_COLUMNS}) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (subscription_id, shown_url, json.dumps(list(events)), json.dumps(sorted(thresholds)), label_prefix,
                vendor, fmt, int(allow_private), to_text(tx.now()), None, nonce, ciphertext, url_nonce,
                url_ciphertext))
        subscription = _subscription_in(tx, subscription_id)
    ledger.alert_rules.forget()
    return subscription


def subscriptions(ledger, *, include_removed: bool = False) -> list[Subscription]:
    where = "" if include_removed else " WHERE removed_at IS NULL"
    with ledger.database.reading() as tx:
        rows = tx.rows(f"SELECT {_SUBSCRIPTION_COLUMNS} FROM alert_subscriptions{where} ORDER BY created_at, id")
    return [_subscription(r) for r in rows]


def subscription(ledger, subscription_id: str) -> Subscription | None:
    with ledger.database.reading() as tx:
        return _subscription_in(tx, subscription_id)


def _subscription_in(tx: Tx, subscription_id: str) -> Subscription | None:
    row = tx.row(f"SELECT {_SUBSCRIPTION_COLUMNS} FROM alert_subscriptions WHERE id = ?", (subscription_id,))
    return _subscription(row) if row else None


def remove_subscription(ledger, subscription_id: str) -> int | None:
    """Remove it; its deliveries not sent yet are cancelled. None when no such active subscription;
    otherwise how many deliveries were cancelled."""
    with ledger.database.transaction() as tx:
        now = to_text(tx.now())
        if not tx.run("UPDATE alert_subscriptions SET removed_at = ? WHERE id = ? AND removed_at IS NULL",
                      (now, subscription_id)):
            return None
        cancelled = tx.run("UPDATE alert_deliveries SET state = 'cancelled', lease = NULL "
                           "WHERE subscription_id = ? AND state = 'pending'", (subscription_id,))
    ledger.alert_rules.forget()
    return cancelled


def _subscription(row: Row) -> Subscription:
    return Subscription(row["id"], row["url"], tuple(json.loads(row["events"])), tuple(json.loads(row["thresholds"])),
                        row["label_prefix"], row["vendor"], row["format"], bool(row["allow_private"]),
                        from_text(row["created_at"]), from_text(row["removed_at"]), bytes(row["secret_nonce"]),
                        bytes(row["secret_ciphertext"]), _bytes(row["url_nonce"]), _bytes(row["url_ciphertext"]))


def _bytes(value) -> bytes | None:
    return None if value is None else bytes(value)


def seal_plain_urls(ledger, seal: Callable[[str, str], tuple[bytes, bytes, str]]) -> int:
    """Seal the URLs stored whole by a release before (`seal(subscription_id, url)` gives the
    nonce, the ciphertext and the shown form); returns how many it sealed."""
    with ledger.database.transaction() as tx:
        rows = tx.rows("SELECT id, url FROM alert_subscriptions WHERE url_nonce IS NULL")
        for row in rows:
            nonce, ciphertext, shown = seal(row["id"], row["url"])
            tx.run("UPDATE alert_subscriptions SET url = ?, url_nonce = ?, url_ciphertext = ? "
                   "WHERE id = ? AND url_nonce IS NULL", (shown, nonce, ciphertext, row["id"]))
    if rows:
        ledger.alert_rules.forget()
    return len(rows)


# --- deliveries ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Claimed:
    """A delivery this deliverer holds until its lease ends: send it, then record the attempt."""

    id: str
    lease: str
    event_id: str
    kind: str
    payload: str
    attempts: int
    subscription: Subscription


@dataclass(frozen=True)
class AttemptResult:
    delivered: bool
    status: int | None  # the receiver's HTTP status, when it answered
    error: str | None  # why it failed, in a few words: never the URL, a secret or the payload


def retry_delay(attempts: int) -> timedelta:
    """After `attempts` failed attempts: 30 s, 1 min, 2 min, ... up to an hour between attempts."""
    return timedelta(seconds=min(RETRY_LONGEST_S, RETRY_FIRST_S * 2 ** max(0, attempts - 1)))


def has_due(ledger) -> bool:
    """A read (no write lock): whether any delivery is due. Polled; claiming takes the lock."""
    with ledger.database.reading() as tx:
        return tx.row("SELECT id FROM alert_deliveries WHERE state = 'pending' AND next_attempt_at <= ? LIMIT 1",
                      (to_text(tx.now()),)) is not None


def claim_due(ledger) -> Claimed | None:
    """Claim the delivery due longest. On PostgreSQL, `FOR UPDATE SKIP LOCKED`: replicas claiming
    at once take different rows. SQLite's write lock serialises the claims. The lease pushes
    `next_attempt_at` forward, so nobody else claims it while it is being sent."""
    skip_locked = " SKIP LOCKED" if ledger.database.lock_rows else ""
    return _claim(ledger, "state = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT 1"
                  + ledger.database.lock_rows + skip_locked, lambda now: (to_text(now),))


def claim_by_hand(ledger, delivery_id: str) -> Claimed:
    """Claim one delivery now, whatever its schedule (`deliveries retry`). Raises LookupError when
    there is no such delivery, ValueError when it cannot be retried."""
    with ledger.database.reading() as tx:
        row = tx.row("SELECT state, lease, next_attempt_at FROM alert_deliveries WHERE id = ?", (delivery_id,))
        now = tx.now()
    if row is None:
        raise LookupError(f"no delivery {delivery_id}")
    if row["state"] in ("delivered", "cancelled"):
        raise ValueError(f"delivery {delivery_id} is {row['state']}: nothing to retry")
    if row["lease"] is not None and from_text(row["next_attempt_at"]) > now:
        raise ValueError(f"delivery {delivery_id} is being sent right now; look again in a minute")
    claimed = _claim(ledger, "id = ? AND state IN ('pending', 'failed')" + ledger.database.lock_rows,
                     lambda now: (delivery_id,), by_hand=True)
    if claimed is None:
        raise ValueError(f"delivery {delivery_id} changed meanwhile; look at it again")
    return claimed


def _claim(ledger, where: str, params, *, by_hand: bool = False) -> Claimed | None:
    with ledger.database.transaction() as tx:
        now = tx.now()
        row = tx.row(f"SELECT id, event_id, attempts, subscription_id FROM alert_deliveries WHERE {where}", params(now))
        if row is None:
            return None
        lease = secrets.token_hex(8)
        columns = "lease = ?, next_attempt_at = ?"
        values: list = [lease, to_text(now + LEASE)]
        if by_hand:  # retried by hand: pending again, with a new day of automatic retries
            columns += ", state = 'pending', give_up_at = ?"
            values.append(to_text(now + RETRY_FOR))
        tx.run(f"UPDATE alert_deliveries SET {columns} WHERE id = ?", (*values, row["id"]))
        event = tx.row("SELECT kind, payload FROM alert_events WHERE id = ?", (row["event_id"],))
        subscription = _subscription_in(tx, row["subscription_id"])
    return Claimed(row["id"], lease, row["event_id"], event["kind"], event["payload"], row["attempts"], subscription)


def record_attempt(ledger, claimed: Claimed, result: AttemptResult) -> dict | None:
    """Record one attempt under its lease (a deliverer whose lease ran out records nothing).
    Returns the delivery as it is now, or None when the lease was lost."""
    with ledger.database.transaction() as tx:
        now = tx.now()
        row = tx.row("SELECT attempts, give_up_at FROM alert_deliveries WHERE id = ? AND lease = ?"
                     + ledger.database.lock_rows, (claimed.id, claimed.lease))
        if row is None:
            return None
        attempts = row["attempts"] + 1
        if result.delivered:
            state, next_at, delivered_at = "delivered", now, now
        else:
            next_at, delivered_at = now + retry_delay(attempts), None
            state = "failed" if next_at > from_text(row["give_up_at"]) else "pending"
        tx.run("UPDATE alert_deliveries SET state = ?, attempts = ?, next_attempt_at = ?, lease = NULL, "
               "last_attempt_at = ?, last_status = ?, last_error = ?, delivered_at = ? WHERE id = ?",
               (state, attempts, to_text(next_at), to_text(now), result.status, (result.error or "")[:300] or None,
                to_text(delivered_at), claimed.id))
        return _delivery_in(tx, claimed.id)


def cancel_claimed(ledger, claimed: Claimed, why: str) -> None:
    """A claimed delivery whose subscription is gone: it is not sent."""
    with ledger.database.transaction() as tx:
        tx.run("UPDATE alert_deliveries SET state = 'cancelled', lease = NULL, last_error = ? WHERE id = ? AND lease = ?",
               (why[:300], claimed.id, claimed.lease))


_DELIVERY_COLUMNS = ("d.id, d.event_id, e.kind, d.subscription_id, d.state, d.attempts, d.created_at, "
                     "d.next_attempt_at, d.give_up_at, d.last_attempt_at, d.last_status, d.last_error, d.delivered_at, "
                     "e.key_id, e.occurred_at")


def deliveries(ledger, *, failed: bool = False, limit: int = LISTED_DELIVERIES) -> list[dict]:
    """Newest first. failed: not delivered, and at least one attempt failed (retrying or given up)."""
    where = " WHERE d.state = 'failed' OR (d.state = 'pending' AND d.attempts > 0)" if failed else ""
    with ledger.database.reading() as tx:
        rows = tx.rows(f"SELECT {_DELIVERY_COLUMNS} FROM alert_deliveries d JOIN alert_events e ON e.id = d.event_id"
                       f"{where} ORDER BY d.created_at DESC, d.id LIMIT {int(limit)}")
    return [dict(r) for r in rows]


def delivery(ledger, delivery_id: str) -> dict | None:
    with ledger.database.reading() as tx:
        return _delivery_in(tx, delivery_id)


def _delivery_in(tx: Tx, delivery_id: str) -> dict | None:
    row = tx.row(f"SELECT {_DELIVERY_COLUMNS} FROM alert_deliveries d JOIN alert_events e ON e.id = d.event_id "
                 "WHERE d.id = ?", (delivery_id,))
    return dict(row) if row else None


def events(ledger, kind: str | None = None) -> list[dict]:
    """The outbox's events, oldest first (tests and reports)."""
    where, params = (" WHERE kind = ?", (kind,)) if kind else ("", ())
    with ledger.database.reading() as tx:
        return [dict(r) for r in tx.rows(f"SELECT * FROM alert_events{where} ORDER BY occurred_at, id", params)]
