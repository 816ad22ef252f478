"""The ledger's store: every read and write of the ledger, the same SQL for SQLite and PostgreSQL.

Money is decided in `decisions.py`; this module reads the state a decision needs, under the
locks its transaction holds, and writes the plan back in the same transaction. A batch of
admits, settlements and refusals shares one transaction: the key rows it touches are locked
once (in key order, then the budgets those keys spend from in name order, so two replicas'
batches never deadlock), the database's clock is read once after the locks, and each decision
sees the state the ones before it left.

Amounts are integer USD micros; times are ISO 8601 UTC text (sortable, the same in both
backends, readable in a raw dump).
"""

import json
import socket
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import lru_cache

from ..records import frozen
from ..text import storable
from ..vendors.base import PricingBasis, Refusal, RefusalKind
from . import alert_store, budgets, decisions
from .base import (
    AdmitRequest,
    Admission,
    AuditFilter,
    CallFacts,
    CommitOutcomeLost,
    IdempotencyMismatch,
    IssuanceIdempotency,
    KeyRecord,
    KeySpec,
    NO_VALID_KEY,
    LedgerConflict,
    LedgerRefusedValue,
    LedgerUnavailable,
    SealedSecret,
    SecretInfo,
    SettleRequest,
    UNATTRIBUTED_ISSUER,
)
from .budgets import BudgetLedger
from .database import Database, Row, Tx, placeholders
from .decisions import OPEN_STATES, KeyCounters, KeyState, ReservationState
from .retention import one_snapshot, rolled_up_totals, rollup_since
from .times import from_text, to_text, utc_now

ISSUANCE_MEMORY = timedelta(hours=24)  # how long an Idempotency-Key returns the same vault key
RUN_GONE_AFTER = timedelta(seconds=10)  # a proxy run silent this long is dead (it beats every 2 s)
CAP_HIT_DECISIONS = (RefusalKind.CAP_EXCEEDED.code, RefusalKind.MAX_CALLS_EXCEEDED.code)
# Audit rows keep what a stranger sent, so what a stranger sent is bounded: a path or key of
# a megabyte would otherwise be a megabyte of disk per refused request.
AUDIT_TEXT_LIMIT = 512
CONFLICT_RETRIES = 3  # a deadlock or serialisation abort is retried; the batch's decisions are re-read
# A hold whose outcome nobody will report: the vendor answered 5xx or the connection died
# ('unknown'), or the proxy run that made it stopped beating with it still pending.
_UNKNOWN = ("(r.state = 'unknown' OR (r.state = 'pending' AND (r.run_id IS NULL OR r.run_id IN "
            "(SELECT run_id FROM proxy_runs WHERE stopped_at IS NOT NULL OR heartbeat_at < ?))))")
_KEY_COLUMNS = ("k.key_id, k.key_hash, k.vendor, k.secret_name, k.label, k.daily_cap_micros, k.total_cap_micros, "
                "k.max_calls, k.allowlist, k.allow_all, k.allow_unpriced, k.created_at, k.expires_at, k.revoked_at, "
                "k.stripe_account, "
                "k.spent_micros, k.reserved_micros, k.calls, k.day, k.day_spent_micros, k.day_reserved_micros, "
                "k.minted_by, k.budget")
_RESERVATION_COLUMNS = ("id, key_id, idempotency_key, endpoint, created_at, state, day, reserved_micros, "
                        "attempts_open, released_attempts, actual_micros")


@frozen
class Refused:
    """A refusal the caller records itself: decided before any key was read (no key sent, a
    malformed path...), or for a key that is not valid (see AdmitRequest.audit_invalid_key)."""

    call: CallFacts
    refusal: Refusal
    key: KeyRecord | None = None
    summary: bool = False  # a row standing for many refusals (keyless_refusals.py): no status of its own


SUMMARY_DECISION = "keybrake_refusals_summarised"


class SqlLedger(BudgetLedger):
    def __init__(self, database: Database) -> None:
        self.database = database
        self.alert_rules = alert_store.RulesCache()  # which alerts the batches derive (read every few s)

    @property
    def backend(self) -> str:
        return self.database.backend

    def close(self) -> None:
        self.database.close()

    def transaction(self):
        return self.database.transaction()

    # --- meta and secrets ---------------------------------------------------------------------

    def get_meta(self, name: str) -> str | None:
        with self.database.reading() as tx:
            row = tx.row("SELECT value FROM meta WHERE name = ?", (name,))
        return row["value"] if row else None

    def set_meta(self, name: str, value: str) -> None:
        with self.database.transaction() as tx:
            tx.run("INSERT INTO meta (name, value) VALUES (?, ?) "
                   "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, value))

    def put_secret(self, vendor: str, name: str, nonce: bytes, ciphertext: bytes,
                   fingerprint: str, account_sid: str | None, auth_user: str | None = None) -> None:
        now = to_text(utc_now())
        with self.database.transaction() as tx:
            tx.run(
                "INSERT INTO secrets (vendor, name, nonce, ciphertext, fingerprint, account_sid, auth_user, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (vendor, name) DO UPDATE "
                "SET nonce = excluded.nonce, ciphertext = excluded.ciphertext, fingerprint = excluded.fingerprint, "
                "account_sid = excluded.account_sid, auth_user = excluded.auth_user, updated_at = excluded.updated_at",
                (vendor, name, nonce, ciphertext, fingerprint, account_sid, auth_user, now, now))

    def get_secret(self, vendor: str, name: str) -> SealedSecret | None:
        with self.database.reading() as tx:
            row = tx.row("SELECT * FROM secrets WHERE vendor = ? AND name = ?", (vendor, name))
        return _sealed(row) if row else None

    def list_secrets(self) -> list[SecretInfo]:
        with self.database.reading() as tx:
            rows = tx.rows("SELECT * FROM secrets ORDER BY vendor, name")
        return [SecretInfo(r["vendor"], r["name"], r["fingerprint"], r["account_sid"], r["auth_user"],
                           from_text(r["created_at"]), from_text(r["updated_at"])) for r in rows]

    def keys_using_secret(self, vendor: str, name: str) -> list[KeyRecord]:
        """The active keys (neither revoked nor expired, by the database's clock) that stand for this secret."""
        with self.database.reading() as tx:
            return self._keys_using_secret(tx, vendor, name, tx.now())

    def delete_secret(self, vendor: str, name: str, *, force: bool = False) -> tuple[bool, list[KeyRecord]]:
        """Delete a secret unless active keys still use it (or `force`).

        Returns whether it was deleted and the active keys that use it: the ones that stopped it,
        or, forced, the ones that are refused from now on. The check and the delete share one
        transaction.
        """
        with self.database.transaction() as tx:
            if tx.row("SELECT name FROM secrets WHERE vendor = ? AND name = ?", (vendor, name)) is None:
                return False, []  # its keys (if any) were cut off when it was deleted
            users = self._keys_using_secret(tx, vendor, name, tx.now())
            if users and not force:
                return False, users
            deleted = tx.run("DELETE FROM secrets WHERE vendor = ? AND name = ?", (vendor, name)) > 0
            return deleted, users

    def _keys_using_secret(self, tx: Tx, vendor: str, name: str, now: datetime) -> list[KeyRecord]:
        rows = tx.rows(f"SELECT {_KEY_COLUMNS} FROM vault_keys k WHERE k.vendor = ? AND k.secret_name = ? "
                       "AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > ?) "
                       "ORDER BY k.created_at, k.key_id", (vendor, name, to_text(now)))
        unknown = self._unknown_by_key(tx, [r["key_id"] for r in rows], now)
        window = decisions.window_of(now)
        return [_key_state(r).record(window, unknown.get(r["key_id"], 0)) for r in rows]

    # --- vault keys ---------------------------------------------------------------------------

    def create_key(self, key_id: str, key_hash: str, spec: KeySpec,
                   idempotency: IssuanceIdempotency | None = None) -> tuple[KeyRecord, bool]:
        """Create a key, or with `idempotency` return the key an earlier identical request created.

        Returns the key and whether it was created now. Two retries racing each other, on one
        replica or on two, still get one key: the record's insert decides, and the loser reads
        the winner's record.
        """
        for _ in range(CONFLICT_RETRIES):
            try:
                return self._create_key(key_id, key_hash, spec, idempotency)
            except _IssuanceRaceLost:
                continue  # the winner has committed: the next try finds its record
        raise LedgerConflict("an issuance with this Idempotency-Key kept racing another; try again")

    def _create_key(self, key_id: str, key_hash: str, spec: KeySpec,
                    idempotency: IssuanceIdempotency | None) -> tuple[KeyRecord, bool]:
        with self.database.transaction() as tx:
            now = tx.now()
            if idempotency is not None:
                earlier = self._earlier_issuance(tx, idempotency, now)
                if earlier is not None:
                    if earlier["request_fingerprint"] != idempotency.request_fingerprint:
                        raise IdempotencyMismatch(idempotency.key)
                    return self._key_record(tx, earlier["key_id"], now), False
                # A record past its memory is replaced; a fresh one (another replica's, committed
                # while this transaction looked) is not: that replica minted the key.
                inserted = tx.run(
                    "INSERT INTO issuances (token_id, idempotency_key, request_fingerprint, key_id, created_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (token_id, idempotency_key) DO UPDATE SET "
                    "request_fingerprint = excluded.request_fingerprint, key_id = excluded.key_id, "
                    "created_at = excluded.created_at WHERE issuances.created_at <= ?",
                    (idempotency.token_id, idempotency.key, idempotency.request_fingerprint, key_id,
                     to_text(now), to_text(now - ISSUANCE_MEMORY)))
                if inserted == 0:
                    raise _IssuanceRaceLost()
            tx.run(
                "INSERT INTO vault_keys (key_id, key_hash, vendor, secret_name, label, daily_cap_micros, "
                "total_cap_micros, max_calls, allowlist, allow_all, allow_unpriced, created_at, expires_at, minted_by, "
                "budget, stripe_account) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key_id, key_hash, spec.vendor, spec.secret_name, spec.label, spec.daily_cap_micros,
                 spec.total_cap_micros, spec.max_calls, json.dumps(list(spec.allowlist)),
                 int(spec.allow_all), int(spec.allow_unpriced), to_text(now), to_text(spec.expires_at),
                 spec.minted_by, spec.budget, spec.stripe_account))
            return self._key_record(tx, key_id, now), True

    def _earlier_issuance(self, tx: Tx, idempotency: IssuanceIdempotency, now: datetime) -> Row | None:
        """The issuance this token made with this Idempotency-Key in the last 24 hours, if any.

        Only the asking token's own records answer (and, for an unrestricted token, records
        older than scopes, which name no token). Their rows are locked first: two racing
        retries serialise here.
        """
        issuers = [idempotency.token_id] + ([UNATTRIBUTED_ISSUER] if idempotency.replays_unattributed else [])
        rows = tx.rows("SELECT token_id, key_id, request_fingerprint, created_at FROM issuances "
                       f"WHERE idempotency_key = ? AND token_id IN {placeholders(issuers)}" + self.database.lock_rows,
                       (idempotency.key, *issuers))
        fresh = [r for r in rows if from_text(r["created_at"]) > now - ISSUANCE_MEMORY]
        fresh.sort(key=lambda r: r["token_id"] != idempotency.token_id)  # the token's own record first
        return fresh[0] if fresh else None

    def get_key(self, key_id: str) -> KeyRecord | None:
        with self.database.reading() as tx:
            return self._key_record(tx, key_id, tx.now())

    def list_keys(self, label: str | None = None, active_at: datetime | None = None,
                  minted_by: str | None = None) -> list[KeyRecord]:
        clauses, params = [], []
        if minted_by is not None:
            clauses.append("k.minted_by = ?")
            params.append(minted_by)
        if label is not None:
            clauses.append("k.label = ?")
            params.append(label)
        if active_at is not None:
            clauses.append("k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > ?)")
            params.append(to_text(active_at))
        with self.database.reading() as tx:
            now = tx.now()
            rows = tx.rows(f"SELECT {_KEY_COLUMNS} FROM vault_keys k" + _where(clauses)
                           + " ORDER BY k.created_at, k.key_id", params)
            unknown = self._unknown_by_key(tx, [r["key_id"] for r in rows], now)
            window = decisions.window_of(now)
            return [_key_state(r).record(window, unknown.get(r["key_id"], 0)) for r in rows]

    def revoke_key(self, key_id: str, minted_by: str | None = None) -> bool:
        """Revoke one key (with `minted_by`, only if that admin token minted it). Returns False
        when no such key exists; revoking twice is fine."""
        owned, params = _minted_by(minted_by)
        with self.database.transaction() as tx:
            now = tx.now()
            revoked = tx.run(f"UPDATE vault_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE key_id = ?{owned}",
                             (to_text(now), key_id, *params)) > 0
            if revoked:
                alert_store.key_revoked(tx, [key_id], now)
            return revoked

    def revoke_label(self, label: str, minted_by: str | None = None) -> list[str]:
        owned, params = _minted_by(minted_by)
        with self.database.transaction() as tx:
            ids = [r["key_id"] for r in tx.rows(f"SELECT key_id FROM vault_keys WHERE label = ?{owned} "
                                                "ORDER BY created_at, key_id", (label, *params))]
            now = tx.now()
            tx.run(f"UPDATE vault_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE label = ?{owned}",
                   (to_text(now), label, *params))
            alert_store.key_revoked(tx, ids, now)
            return ids

    def _key_record(self, tx: Tx, key_id: str, now: datetime) -> KeyRecord | None:
        row = tx.row(f"SELECT {_KEY_COLUMNS} FROM vault_keys k WHERE k.key_id = ?", (key_id,))
        if row is None:
            return None
        unknown = self._unknown_by_key(tx, [key_id], now).get(key_id, 0)
        return _key_state(row).record(decisions.window_of(now), unknown)

    def _unknown_by_key(self, tx: Tx, key_ids: Sequence[str], now: datetime) -> dict[str, int]:
        if not key_ids:
            return {}
        rows = tx.rows(
            "SELECT r.key_id, CAST(COALESCE(SUM(r.reserved_micros), 0) AS BIGINT) AS unknown FROM reservations r "
            f"WHERE r.key_id IN {placeholders(key_ids)} AND r.state IN ('pending', 'unknown') AND {_UNKNOWN} "
            "GROUP BY r.key_id", (*key_ids, _gone_before(now)))
        return {r["key_id"]: r["unknown"] for r in rows}

    # --- the gate: admits, settlements and refusals, in batches -------------------------------

    def admit(self, request: AdmitRequest) -> Admission:
        return self.apply_batch([request], [], [])[0][0]

    def settle(self, request: SettleRequest) -> None:
        self.apply_batch([], [request], [])

    def record_refusal(self, call: CallFacts, refusal: Refusal) -> int:
        return self.apply_batch([], [], [Refused(call, refusal)])[1][0]

    def apply_batch(self, admits: Sequence[AdmitRequest], settles: Sequence[SettleRequest],
                    refusals: Sequence[Refused]) -> tuple[list[Admission], list[int]]:
        """Decide every admit and settlement, and record every refusal, in one transaction.

        Returns the admissions (in order) and the refusals' audit ids. Settlements are applied
        before admits, so a hold released in this batch is free for the admits after it.
        """
        for attempt in range(CONFLICT_RETRIES):
            answered: list[Admission] | None = None  # set once only the COMMIT is left
            try:
                with self.database.transaction(pipelined=True) as tx:
                    tx.plan_by_index()
                    batch = _Batch(tx, self.database.lock_rows, admits, settles, len(refusals),
                                   self.alert_rules.collector(tx))
                    for request in settles:
                        batch.settle(request)
                    pending = [batch.admit(request) for request in admits]
                    refused = [batch.refuse(item.call, item.refusal, item.key, summary=item.summary)
                               for item in refusals]
                    batch.write()
                    answered = [a.finish(batch.ids) for a in pending]
                return answered, [batch.ids[i] for i in refused]
            except LedgerConflict:
                if attempt == CONFLICT_RETRIES - 1:
                    raise
            except LedgerRefusedValue:
                raise  # an answer, even at COMMIT: the batch rolled back, nothing of it was lost
            except LedgerUnavailable as failure:
                # A conflict is a rollback the server reported; this may be a commit nobody heard.
                if answered is not None and self.database.commit_can_be_lost:
                    raise CommitOutcomeLost(str(failure), [a for a in answered if a.allowed]) from failure
                raise
        raise AssertionError("unreachable")

    # --- reports ------------------------------------------------------------------------------

    def audit_rows(self, where: AuditFilter) -> list[dict]:
        clauses, params = _audit_clauses(where)
        if where.after_id is not None:
            clauses.append(f"(id > ? OR id IN {placeholders(where.also_ids)})")
            params += [where.after_id, *where.also_ids]
        sql = "SELECT * FROM audit" + _where(clauses) + (" ORDER BY id DESC" if where.newest_first else " ORDER BY id")
        if where.limit:
            sql += f" LIMIT {int(where.limit)}"
        with self.database.reading() as tx:
            return [dict(row) for row in tx.rows(sql, params)]

    def spend(self, by: str, where: AuditFilter) -> list[dict]:
        """Totals per group: calls and refusals from the audit, money from the reservations."""
        if by == "budget":  # grouped by the key's budget, then counted in each ancestor too
            return self.spend_by_budget(
                _audit_clauses(where, key_column="a.key_id", label_column="a.label", time_column="a.ts"),
                _audit_clauses(where, key_column="r.key_id", label_column="k.label", time_column="r.created_at"),
                _audit_clauses(where, key_column="d.key_id", label_column="d.label", time_column="d.day",
                               since=rollup_since(where.since)))
        audit_group = {"key": "key_id", "label": "label", "vendor": "vendor", "day": "substr(ts, 1, 10)"}[by]
        clauses, params = _audit_clauses(where)
        cap_hits = ", ".join(f"'{code}'" for code in CAP_HIT_DECISIONS)
        money_group = {"key": "r.key_id", "label": "k.label", "vendor": "k.vendor", "day": "r.day"}[by]
        money_clauses, money_params = _audit_clauses(where, key_column="r.key_id", label_column="k.label",
                                                     time_column="r.created_at")
        rollup_clauses, rollup_params = _audit_clauses(where, time_column="day", since=rollup_since(where.since))
        with one_snapshot(self.database) as tx:
            calls = tx.rows(
                f"SELECT {audit_group} AS grp, COUNT(*) AS calls, "
                "SUM(CASE WHEN decision = 'allowed' THEN 1 ELSE 0 END) AS allowed, "
                "SUM(CASE WHEN decision != 'allowed' THEN 1 ELSE 0 END) AS refused, "
                f"SUM(CASE WHEN decision IN ({cap_hits}) THEN 1 ELSE 0 END) AS cap_hits "
                "FROM audit" + _where(clauses) + f" GROUP BY {audit_group}", params)
            money = tx.rows(
                f"SELECT {money_group} AS grp, "
                "CAST(COALESCE(SUM(CASE WHEN r.state = 'settled' THEN r.actual_micros END), 0) AS BIGINT) "
                "AS spent_micros, "
                "CAST(COALESCE(SUM(CASE WHEN r.state IN ('pending', 'unknown') THEN r.reserved_micros END), 0) "
                "AS BIGINT) AS reserved_micros "
                "FROM reservations r JOIN vault_keys k ON k.key_id = r.key_id" + _where(money_clauses)
                + f" GROUP BY {money_group}", money_params)
            rolled_up = rolled_up_totals(tx, by, rollup_clauses, rollup_params)
        totals: dict = {}
        empty = {"calls": 0, "allowed": 0, "refused": 0, "cap_hits": 0, "spent_micros": 0, "reserved_micros": 0}
        for row in calls:
            totals[row["grp"]] = {by: row["grp"], **empty,
                                  **{name: int(row[name]) for name in ("calls", "allowed", "refused", "cap_hits")}}
        for row in money:
            entry = totals.setdefault(row["grp"], {by: row["grp"], **empty})
            entry["spent_micros"] = int(row["spent_micros"])
            entry["reserved_micros"] = int(row["reserved_micros"])
        for row in rolled_up:  # days `keybrake audit prune` rolled up: their rows are gone, their totals not
            entry = totals.setdefault(row["grp"], {by: row["grp"], **empty})
            for name in ("calls", "allowed", "refused", "cap_hits", "spent_micros"):
                entry[name] += int(row[name])
        return [totals[group] for group in sorted(totals, key=lambda g: (g is None, g or ""))]

    def open_reservations(self, key_id: str) -> list[dict]:
        """Holds not yet settled; `state` is `unknown` too for a pending hold whose proxy run is gone."""
        with self.database.reading() as tx:
            rows = tx.rows(
                f"SELECT r.*, CASE WHEN {_UNKNOWN} THEN 'unknown' ELSE r.state END AS shown_state "
                "FROM reservations r WHERE r.key_id = ? AND r.state IN ('pending', 'unknown') ORDER BY r.id",
                (_gone_before(tx.now()), key_id))
        return [{**dict(row), "state": row["shown_state"]} for row in rows]

    def metrics_totals(self) -> dict[str, dict[str, int]]:
        """Per vendor, what the Prometheus metrics report: money and keys from the keys' own
        counters (one row per key, never the audit trail), holds from the open reservations only
        (the `reservations_open` index holds just those). Cheap on a ledger of millions of calls."""
        with self.database.reading() as tx:
            now = tx.now()
            keys = tx.rows(
                "SELECT vendor, "
                "SUM(CASE WHEN revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?) THEN 1 ELSE 0 END) "
                "AS active_keys, CAST(COALESCE(SUM(spent_micros), 0) AS BIGINT) AS spent_micros, "
                "CAST(COALESCE(SUM(reserved_micros), 0) AS BIGINT) AS reserved_micros, "
                "CAST(COALESCE(SUM(CASE WHEN day = ? THEN day_spent_micros ELSE 0 END), 0) AS BIGINT) "
                "AS spent_today_micros FROM vault_keys GROUP BY vendor",
                (to_text(now), decisions.window_of(now)))
            holds = tx.rows(
                "SELECT vendor, is_unknown, COUNT(*) AS holds, CAST(COALESCE(SUM(micros), 0) AS BIGINT) AS micros "
                f"FROM (SELECT k.vendor AS vendor, CASE WHEN {_UNKNOWN} THEN 1 ELSE 0 END AS is_unknown, "
                "r.reserved_micros AS micros FROM reservations r JOIN vault_keys k ON k.key_id = r.key_id "
                "WHERE r.state IN ('pending', 'unknown')) open_holds GROUP BY vendor, is_unknown",
                (_gone_before(now),))
        empty = {"active_keys": 0, "spent_micros": 0, "reserved_micros": 0, "spent_today_micros": 0,
                 "open_reservations": 0, "unknown_reservations": 0, "unknown_micros": 0}
        totals: dict[str, dict[str, int]] = {}
        for row in keys:
            totals[row["vendor"]] = {**empty, **{name: int(row[name] or 0) for name in
                                                 ("active_keys", "spent_micros", "reserved_micros",
                                                  "spent_today_micros")}}
        for row in holds:
            entry = totals.setdefault(row["vendor"], dict(empty))
            entry["open_reservations"] += int(row["holds"])
            if row["is_unknown"]:
                entry["unknown_reservations"] += int(row["holds"])
                entry["unknown_micros"] += int(row["micros"])
        return totals

    # --- corrections --------------------------------------------------------------------------

    def price_checks(self, *, vendor: str, label: str | None = None, key_id: str | None = None) -> list[dict]:
        """Reservations settled at their estimate because the vendor had no price yet."""
        sql = ("SELECT r.id, r.key_id, k.label, k.vendor, k.secret_name, r.object_id, r.actual_micros "
               "FROM reservations r JOIN vault_keys k ON k.key_id = r.key_id "
               "WHERE r.state = 'settled' AND r.estimated = 1 AND r.object_id IS NOT NULL AND k.vendor = ?")
        params: list = [vendor]
        if label is not None:
            sql += " AND k.label = ?"
            params.append(label)
        if key_id is not None:
            sql += " AND r.key_id = ?"
            params.append(key_id)
        with self.database.reading() as tx:
            return [dict(r) for r in tx.rows(sql + " ORDER BY r.id", params)]

    def correct(self, reservation_id: int, change) -> tuple[dict, int, int]:
        """Apply a correction in one transaction: `change(reservation, counters, now)` returns
        (new counters, new reservation columns, before, after, note) or raises. Returns the
        reservation row as it was, and the amounts before and after."""
        with self.database.transaction() as tx:
            owner = tx.row("SELECT key_id FROM reservations WHERE id = ?", (reservation_id,))
            if owner is None:
                raise LookupError(f"no reservation {reservation_id}")
            key_row = tx.row(f"SELECT {_KEY_COLUMNS} FROM vault_keys k WHERE k.key_id = ?" + self.database.lock_rows,
                             (owner["key_id"],))
            # Read only now, under the key's lock: a reservation changes (or is pruned) only under
            # it, and a batch that held it may just have settled this one (PostgreSQL reads each
            # statement afresh).
            row = tx.row(f"SELECT {_RESERVATION_COLUMNS}, object_id, estimated FROM reservations WHERE id = ?",
                         (reservation_id,))
            if row is None:
                raise LookupError(f"no reservation {reservation_id}")
            state = _key_state(key_row)
            locked, chain = {}, ()
            if state.spec.budget is not None:  # after the key's lock, as a batch takes them
                locked = budgets.lock_chains(tx, self.database.lock_rows, [state.spec.budget])
                chain = budgets.chain_of(locked, state.spec.budget)
            now = tx.now()
            counters, columns, before, after, note = change(_reservation(row), dict(row), state.counters, now)
            _write_counters(tx, [(state.key_id, counters)])
            alerts = self.alert_rules.collector(tx)
            alerts.counters_changed(state, counters, now)
            if chain:
                moved = decisions.follow(chain, row["day"], state.counters, counters)
                budgets.write_counters(tx, moved)
                alerts.budgets_changed(locked, moved, now)
            alerts.write(tx, now)
            tx.run("UPDATE reservations SET " + ", ".join(f"{name} = ?" for name in columns) + " WHERE id = ?",
                   (*columns.values(), reservation_id))
            method, _, path = row["endpoint"].partition(" ")
            spent_change = after - (before if row["state"] == "settled" else 0)
            audit_id = tx.new_ids({"audit": 1})["audit"][0]
            tx.run(
                "INSERT INTO audit (id, ts, key_id, label, vendor, method, path, decision, outcome, reserved_micros, "
                "actual_micros, object_id, idempotency_key, reservation_id, message) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'reconciled', 'settled', 0, ?, ?, ?, ?, ?)",
                (audit_id, to_text(now), state.key_id, state.spec.label, state.spec.vendor, method, path,
                 spent_change, row["object_id"], row["idempotency_key"], reservation_id,
                 f"{note}; reserved at {from_text(row['created_at']):%Y-%m-%d %H:%M:%S}Z"))
            return dict(row), before, after

    # --- admin and worker tokens: the same shape, each kind in its own table ------------------

    def create_admin_token(self, token_id: str, name: str | None, token_hash: str,
                           scope: str | None = None) -> datetime:
        """`scope` is the token's ceilings as vault/scopes.py writes them; None: unrestricted."""
        with self.database.transaction() as tx:
            now = tx.now()
            tx.run("INSERT INTO admin_tokens (token_id, name, token_hash, created_at, scope) VALUES (?, ?, ?, ?, ?)",
                   (token_id, name, token_hash, to_text(now), scope))
            return now

    def list_admin_tokens(self) -> list[dict]:
        return self._list_tokens("admin_tokens", extra=", scope")

    def active_admin_tokens(self) -> list[tuple[str, str, str | None]]:
        """(token_id, token_hash, scope) of every unrevoked admin token."""
        with self.database.reading() as tx:
            return [(r["token_id"], r["token_hash"], r["scope"])
                    for r in tx.rows("SELECT token_id, token_hash, scope FROM admin_tokens WHERE revoked_at IS NULL")]

    def revoke_admin_token(self, token_id: str) -> bool:
        return self._revoke_token("admin_tokens", token_id)

    def active_admin_token_hashes(self) -> list[tuple[str, str]]:
        with self.database.reading() as tx:
            return [(r["token_id"], r["token_hash"])
                    for r in tx.rows("SELECT token_id, token_hash FROM admin_tokens WHERE revoked_at IS NULL")]

    def create_worker_token(self, token_id: str, name: str | None, token_hash: str) -> datetime:
        return self._create_token("worker_tokens", token_id, name, token_hash)

    def list_worker_tokens(self) -> list[dict]:
        return self._list_tokens("worker_tokens")

    def revoke_worker_token(self, token_id: str) -> bool:
        return self._revoke_token("worker_tokens", token_id)

    def proxy_credential_active(self, credential_hash: str) -> bool:
        """Whether a forward-proxy password is an unrevoked worker token or a vault key that is
        unrevoked and unexpired by the database's clock. Both are looked up by their unique hash."""
        with self.database.reading() as tx:
            row = tx.row(
                "SELECT 1 AS found FROM worker_tokens WHERE token_hash = ? AND revoked_at IS NULL "
                "UNION ALL SELECT 1 AS found FROM vault_keys WHERE key_hash = ? AND revoked_at IS NULL "
                "AND (expires_at IS NULL OR expires_at > ?)",
                (credential_hash, credential_hash, to_text(tx.now())))
        return row is not None

    def _create_token(self, table: str, token_id: str, name: str | None, token_hash: str) -> datetime:
        with self.database.transaction() as tx:
            now = tx.now()
            tx.run(f"INSERT INTO {_token_table(table)} (token_id, name, token_hash, created_at) VALUES (?, ?, ?, ?)",
                   (token_id, name, token_hash, to_text(now)))
            return now

    def _list_tokens(self, table: str, extra: str = "") -> list[dict]:
        with self.database.reading() as tx:
            rows = tx.rows(f"SELECT token_id, name, created_at, revoked_at{extra} FROM {_token_table(table)} "
                           "ORDER BY created_at, token_id")
        return [{**dict(r), "created_at": from_text(r["created_at"]), "revoked_at": from_text(r["revoked_at"])}
                for r in rows]

    def _revoke_token(self, table: str, token_id: str) -> bool:
        with self.database.transaction() as tx:
            return tx.run(f"UPDATE {_token_table(table)} SET revoked_at = COALESCE(revoked_at, ?) WHERE token_id = ?",
                          (to_text(tx.now()), token_id)) > 0

    # --- proxy runs: who may still settle a pending hold --------------------------------------

    def register_run(self, run_id: str, pid: int, host: str) -> None:
        with self.database.transaction() as tx:
            now = to_text(tx.now())
            tx.run("INSERT INTO proxy_runs (run_id, pid, host, started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?)",
                   (run_id, pid, host, now, now))

    def beat(self, run_id: str) -> None:
        with self.database.transaction() as tx:
            tx.run("UPDATE proxy_runs SET heartbeat_at = ? WHERE run_id = ?", (to_text(tx.now()), run_id))

    def stop_run(self, run_id: str) -> None:
        with self.database.transaction() as tx:
            tx.run("UPDATE proxy_runs SET stopped_at = ? WHERE run_id = ? AND stopped_at IS NULL",
                   (to_text(tx.now()), run_id))

    def reap_local_runs(self, alive) -> None:
        """Mark this host's runs whose process is gone as stopped, without waiting for their
        heartbeat to go stale: a proxy restarted after kill -9 shows its predecessor's holds as
        unknown at once. `alive(pid)` says whether a process of this host still runs."""
        host = socket.gethostname()
        with self.database.transaction() as tx:
            now = to_text(tx.now())
            for row in tx.rows("SELECT run_id, pid FROM proxy_runs WHERE stopped_at IS NULL AND host = ?", (host,)):
                if not alive(row["pid"]):
                    tx.run("UPDATE proxy_runs SET stopped_at = ? WHERE run_id = ? AND stopped_at IS NULL",
                           (now, row["run_id"]))


class _IssuanceRaceLost(Exception):
    """Another transaction recorded the same issuance first: roll back, then read its record."""


class _PendingAdmission:
    """An admission whose new rows get their ids when the batch writes them."""

    def __init__(self, audit_slot: int | None, plan: decisions.AdmitPlan, reservation_slot: int | None,
                 budget_headroom: int | None = None) -> None:
        self.audit_slot, self.plan, self.reservation_slot = audit_slot, plan, reservation_slot
        self.budget_headroom = budget_headroom

    def finish(self, ids: dict[int, int]) -> Admission:
        plan = self.plan
        if plan.refusal is not None:
            return Admission(ids.get(self.audit_slot), plan.refusal, key=plan.key)
        # A retry decided in the batch that opened its reservation attached to that reservation's slot.
        reservation_id = ids[self.reservation_slot] if self.reservation_slot is not None else ids.get(
            plan.reservation_id, plan.reservation_id)
        return Admission(ids[self.audit_slot], None, key=plan.key, reservation_id=reservation_id,
                         opened=plan.opened, reserved_micros=plan.reserved_micros,
                         basis=plan.basis, secret=plan.secret,
                         budget_headroom_micros=self.budget_headroom)


class _Batch:
    """One transaction's decisions: state read once, decided in order, written at the end.

    New rows get "slots" (negative numbers) while deciding; `write` allocates their ids.
    """

    def __init__(self, tx: Tx, lock_rows: str, admits: Sequence[AdmitRequest],
                 settles: Sequence[SettleRequest], refusal_count: int, alerts: alert_store.BatchAlerts) -> None:
        self.tx = tx
        self.alerts = alerts  # the alert events these decisions cause, written with them
        self.keys_by_hash: dict[str, KeyState] = {}
        self.keys: dict[str, KeyState] = {}
        self.secrets: dict[str, SealedSecret | None] = {}
        self.touched: set[str] = set()
        self.idempotency_keys: dict[int, tuple[str, str]] = {}  # reservation id -> (key_id, Idempotency-Key)
        # The keys' locks, then the clock, then the rows these decisions read, in one round trip on
        # PostgreSQL: its pipeline runs them in order, so the clock and the reads come after the
        # locks are held. A reservation changes only under its key's lock.
        lock_query = self._key_lock_query(lock_rows, [r.key_hash for r in admits], [r.reservation_id for r in settles])
        reservations_query, audit_query = self._reservations_query(admits, settles), _settled_audit_query(tx, settles)
        # An admit writes at most one reservation and one audit row, a refusal one audit row.
        tx.prefetch_ids({"reservations": len(admits), "audit": len(admits) + refusal_count})
        self.now, (key_rows, reservation_rows, audit_rows) = tx.now_and_rows(
            [lock_query, reservations_query, audit_query], clock_after=1)
        self._take_keys(key_rows)
        # Then the budgets of those keys, with their ancestors, and the clock again once they are
        # held too. A batch of keys without a budget (the common case) asks nothing more.
        self.budgets: dict[str, decisions.BudgetState] = {}
        self.touched_budgets: set[str] = set()
        if spending_from := sorted({k.spec.budget for k in self.keys.values() if k.spec.budget is not None}):
            self.budgets = budgets.lock_chains(tx, lock_rows, spending_from)
            self.now = tx.now()
        self.now_text = to_text(self.now)
        self.reservations = self._reservations(reservation_rows)
        self.settled_audit_rows = _settled_audit_rows(settles, audit_rows)
        # (key_id, object id) -> the most this batch's settlements counted for it: not in the
        # database until the batch writes, and an admit after them must see it.
        self.counted_here: dict[tuple[str, str], int] = {}
        self.audit_rows: list[tuple] = []  # (slot, values)
        self.audit_updates: list[tuple] = []
        self.new_reservations: list[tuple] = []  # (slot, key_id, NewReservation, run_id)
        self.reservation_changes: dict[int, tuple] = {}
        self.ids: dict[int, int] = {}
        self._slots = 0

    def _slot(self) -> int:
        self._slots -= 1
        return self._slots

    def _key_lock_query(self, lock_rows: str, hashes: list[str], reservation_ids: list[int]) -> tuple[str, list] | None:
        hashes, reservation_ids = sorted(set(hashes)), sorted(set(reservation_ids))
        # One statement, so the rows are locked in one key order; each index used on its own (an OR
        # of the two would scan every key).
        by_hash, hash_params = self.tx.one_of("key_hash", hashes)
        by_reservation, reservation_params = self.tx.one_of("id", reservation_ids)
        if hashes and reservation_ids:
            where = (f"k.key_id IN (SELECT key_id FROM vault_keys WHERE {by_hash} "
                     f"UNION SELECT key_id FROM reservations WHERE {by_reservation})")
            params = [*hash_params, *reservation_params]
        elif hashes:
            where, params = f"k.{by_hash}", hash_params
        elif reservation_ids:
            where, params = f"k.key_id IN (SELECT key_id FROM reservations WHERE {by_reservation})", reservation_params
        else:
            return None
        return (f"SELECT {_KEY_COLUMNS}, s.nonce, s.ciphertext, s.account_sid, s.auth_user FROM vault_keys k "
                f"LEFT JOIN secrets s ON s.vendor = k.vendor AND s.name = k.secret_name WHERE {where} "
                "ORDER BY k.key_id" + (lock_rows and lock_rows + " OF k"), params)

    def _take_keys(self, rows: Sequence[Row]) -> None:
        for row in rows:
            state = _key_state(row)
            self.keys[state.key_id] = state
            self.keys_by_hash[row["key_hash"]] = state
            self.secrets[state.key_id] = None if row["nonce"] is None else SealedSecret(
                state.spec.vendor, state.spec.secret_name, bytes(row["nonce"]), bytes(row["ciphertext"]),
                row["account_sid"], row["auth_user"])

    def _reservations_query(self, admits: Sequence[AdmitRequest],
                            settles: Sequence[SettleRequest]) -> tuple[str, list] | None:
        """The batch's reservations: those its admits name by key and Idempotency-Key, and its settlements by id.

        Sent before the keys' ids are known (with their locks), so it asks for every pair of the
        batch's keys and Idempotency-Keys: a few rows too many when keys share one, read and unused.
        """
        named = [r for r in admits if r.call.idempotency_key is not None]
        hashes, idempotency_keys = sorted({r.key_hash for r in named}), sorted({r.call.idempotency_key for r in named})
        ids = sorted({r.reservation_id for r in settles})
        by_hash, hash_params = self.tx.one_of("key_hash", hashes)
        by_idempotency_key, idempotency_key_params = self.tx.one_of("idempotency_key", idempotency_keys)
        by_id, id_params = self.tx.one_of("id", ids)
        # Each its own SELECT (an OR would keep PostgreSQL from an index); a reservation found by
        # both comes twice, which changes nothing.
        selects, params = [], []
        if named:
            selects.append(f"SELECT {_RESERVATION_COLUMNS} FROM reservations WHERE {by_idempotency_key} "
                           f"AND key_id IN (SELECT key_id FROM vault_keys WHERE {by_hash})")
            params += [*idempotency_key_params, *hash_params]
        if ids:
            selects.append(f"SELECT {_RESERVATION_COLUMNS} FROM reservations WHERE {by_id}")
            params += id_params
        return (" UNION ALL ".join(selects), params) if selects else None

    def _reservations(self, rows: Sequence[Row]) -> dict:
        """By id, and by (key_id, Idempotency-Key)."""
        found: dict = {}
        for row in rows:
            reservation = _reservation(row)
            found[reservation.id] = reservation
            if row["idempotency_key"] is not None:
                found[(reservation.key_id, row["idempotency_key"])] = reservation
                self.idempotency_keys[reservation.id] = (reservation.key_id, row["idempotency_key"])
        return found

    # --- deciding -----------------------------------------------------------------------------

    def admit(self, request: AdmitRequest) -> _PendingAdmission:
        state = self.keys_by_hash.get(request.key_hash)
        key_id = state.key_id if state else None
        existing = None
        if state is not None and request.call.idempotency_key is not None:
            existing = self.reservations.get((key_id, request.call.idempotency_key))
        estimate = request.estimate
        counted = None
        if state is not None and estimate is not None and estimate.basis is not PricingBasis.FIXED:
            counted = self._counted(key_id, estimate.object_ref)
        chain = budgets.chain_of(self.budgets, state.spec.budget) if state is not None and state.spec.budget else ()
        plan = decisions.admit(decisions.AdmitView(state, self.secrets.get(key_id), existing, counted, chain),
                               request, self.now)
        call = request.call
        if plan.refusal is not None and plan.refusal.kind in NO_VALID_KEY and not request.audit_invalid_key:
            return _PendingAdmission(None, plan, None)  # the caller records it, or counts it in a summary
        if plan.refusal is not None:
            self.alerts.refused(plan.key, plan.refusal, self.now, self.budgets)
            return _PendingAdmission(self.refuse(call, plan.refusal, plan.key), plan, None)
        headroom = budgets.chain_headroom(chain, decisions.window_of(self.now)) if chain else None  # before the hold
        self._set_counters(key_id, plan.counters)
        self._set_budgets(plan.budgets)
        reservation_slot = None
        if plan.new_reservation is not None:
            reservation_slot = self._slot()
            new = plan.new_reservation
            self.new_reservations.append((reservation_slot, key_id, new, request.run_id))
            if new.idempotency_key is not None:  # a retry later in this batch attaches to it
                self.idempotency_keys[reservation_slot] = (key_id, new.idempotency_key)
                self._remember(ReservationState(reservation_slot, key_id, new.endpoint, self.now, "pending", new.day,
                                                new.reserved, 1, 0))
        elif plan.change is not None:
            self._change(plan.change, request.run_id)
        audit_slot = self._slot()
        self.audit_rows.append((audit_slot, _audit_values(
            self.now_text, call, plan.key, "allowed", plan.reserved_micros, reservation_slot or plan.reservation_id, None,
            amount_minor=estimate.amount_minor if estimate else None,
            currency=estimate.currency if estimate else None)))
        return _PendingAdmission(audit_slot, plan, reservation_slot, headroom)

    def _change(self, change: decisions.ReservationChange, run_id: str | None) -> None:
        current = self.reservations[change.id]
        updated = ReservationState(current.id, current.key_id, current.endpoint, current.created_at, change.state,
                                   change.day, change.reserved, change.attempts_open, change.released_attempts,
                                   None if change.reopened else current.actual)
        self._remember(updated)
        columns = {"state": change.state, "day": change.day, "reserved_micros": change.reserved,
                   "attempts_open": change.attempts_open, "released_attempts": change.released_attempts}
        if change.reopened:
            columns.update(run_id=run_id, actual_micros=None, settled_at=None, estimated=0)
        self._update_reservation(change.id, columns)

    def _remember(self, reservation: ReservationState) -> None:
        self.reservations[reservation.id] = reservation
        if (named := self.idempotency_keys.get(reservation.id)) is not None:
            self.reservations[named] = reservation

    def _update_reservation(self, reservation_id: int, columns: dict) -> None:
        # A reservation created in this batch (a negative slot) is inserted first, then updated.
        self.reservation_changes.setdefault(reservation_id, {}).update(columns)

    def _counted(self, key_id: str, object_ref: str | None) -> int | None:
        if object_ref is None:
            return None
        row = self.tx.row(
            "SELECT MAX(actual_micros) AS counted FROM reservations WHERE key_id = ? AND object_id = ? "
            "AND state = 'settled' AND actual_micros > 0 AND endpoint LIKE 'POST %'", (key_id, storable(object_ref)))
        counted = max(row["counted"] if row and row["counted"] else 0,
                      self.counted_here.get((key_id, storable(object_ref)), 0))
        return counted or None

    def settle(self, request: SettleRequest) -> None:
        reservation = self.reservations.get(request.reservation_id)
        state = self.keys.get(reservation.key_id) if reservation is not None else None
        if state is None or request.audit_id in self.settled_audit_rows:
            return  # settled before (a retried settlement whose first commit went through)
        self.settled_audit_rows.add(request.audit_id)
        chain = budgets.chain_of(self.budgets, state.spec.budget) if state.spec.budget else ()
        plan = decisions.settle(reservation, state.counters, request, chain)
        self.alerts.settled(reservation, plan.state, state, self.now)
        self._set_counters(reservation.key_id, plan.counters)
        self._set_budgets(plan.budgets)
        object_id = storable(request.object_ids[0]) if request.object_ids else None  # the vendor's text
        updated = ReservationState(reservation.id, reservation.key_id, reservation.endpoint, reservation.created_at,
                                   plan.state, reservation.day, reservation.reserved, plan.attempts_open,
                                   plan.released_attempts, plan.actual)
        self._remember(updated)
        columns = {"state": plan.state, "actual_micros": plan.actual, "attempts_open": plan.attempts_open,
                   "released_attempts": plan.released_attempts, "estimated": int(plan.estimated)}
        if plan.closed:
            columns["settled_at"] = self.now_text
        if object_id is not None and plan.state == "settled" and plan.counted:
            columns["object_id"] = object_id
            if (plan.actual or 0) > 0 and reservation.endpoint.startswith("POST "):  # as _counted reads it
                counted = (reservation.key_id, object_id)
                self.counted_here[counted] = max(self.counted_here.get(counted, 0), plan.actual)
        elif object_id is not None and reservation.state in OPEN_STATES:
            columns["object_id"] = object_id
        self._update_reservation(reservation.id, columns)
        self.audit_updates.append((
            request.status, plan.outcome, plan.counted, _bounded(" ".join(request.object_ids) or None),
            _bounded(request.vendor_request_id), _countable(request.amount_minor), _bounded(request.currency, 8),
            int(request.replayed),
            round(request.duration_ms, 3), _bounded(request.error), request.audit_id))

    def refuse(self, call: CallFacts, refusal: Refusal, key: KeyRecord | None, *, summary: bool = False) -> int:
        slot = self._slot()
        decision, status = (SUMMARY_DECISION, None) if summary else (refusal.kind.code, call.status_of(refusal.kind))
        self.audit_rows.append((slot, _audit_values(
            self.now_text, call, key, decision, 0, None, status, message=refusal.message,
            duration_ms=None if summary else _elapsed_ms(call))))
        return slot

    def _set_counters(self, key_id: str | None, counters: KeyCounters | None) -> None:
        if key_id is None or counters is None:
            return
        state = self.keys[key_id]
        self.alerts.counters_changed(state, counters, self.now)
        self.keys[key_id] = KeyState(state.key_id, state.spec, state.created_at, state.revoked_at, counters)
        for key_hash, known in self.keys_by_hash.items():
            if known.key_id == key_id:
                self.keys_by_hash[key_hash] = self.keys[key_id]
        self.touched.add(key_id)

    def _set_budgets(self, changed: tuple[decisions.BudgetState, ...]) -> None:
        if changed:  # (a key without a budget changes none: nothing to look at)
            self.alerts.budgets_changed(self.budgets, changed, self.now)
        for budget in changed:
            self.budgets[budget.name] = budget
            self.touched_budgets.add(budget.name)

    # --- writing ------------------------------------------------------------------------------

    def write(self) -> None:
        tx = self.tx
        ids = tx.new_ids({"reservations": len(self.new_reservations), "audit": len(self.audit_rows)})
        self.ids.update(zip([n[0] for n in self.new_reservations], ids["reservations"]))
        self.ids.update(zip([a[0] for a in self.audit_rows], ids["audit"]))
        if self.new_reservations:
            tx.insert_rows("reservations", _NEW_RESERVATION_COLUMNS, [
                (self.ids[slot], key_id, new.idempotency_key, new.endpoint, run_id, new.day, new.reserved, "pending", 1,
                 self.now_text) for slot, key_id, new, run_id in self.new_reservations])
        # One statement per shape of change, each with all its rows.
        shapes: dict[tuple[str, ...], list[tuple]] = {}
        for reservation_id, columns in self.reservation_changes.items():
            names = tuple(sorted(columns))
            shapes.setdefault(names, []).append(
                (*(columns[n] for n in names), self.ids.get(reservation_id, reservation_id)))
        for names, rows in shapes.items():
            tx.update_rows("reservations", names, rows)
        if self.audit_rows:
            tx.insert_rows("audit", _NEW_AUDIT_COLUMNS,
                           [(self.ids[slot], *values[:13], self.ids.get(values[13], values[13]), *values[14:])
                            for slot, values in self.audit_rows])
        if self.audit_updates:
            tx.update_rows("audit", _SETTLED_AUDIT_COLUMNS, self.audit_updates, keep_if_null=_KEPT_UNLESS_SENT)
        _write_counters(tx, [(key_id, self.keys[key_id].counters) for key_id in sorted(self.touched)])
        if self.touched_budgets:
            budgets.write_counters(tx, [self.budgets[name] for name in sorted(self.touched_budgets)])
        self.alerts.write(tx, self.now)


_NEW_RESERVATION_COLUMNS = ("id", "key_id", "idempotency_key", "endpoint", "run_id", "day", "reserved_micros", "state",
                            "attempts_open", "created_at")
_NEW_AUDIT_COLUMNS = ("id", "ts", "key_id", "label", "vendor", "method", "path", "status", "decision", "reserved_micros",
                      "actual_micros", "amount_minor", "currency", "idempotency_key", "reservation_id", "message",
                      "duration_ms")
_SETTLED_AUDIT_COLUMNS = ("status", "outcome", "actual_micros", "object_id", "vendor_request_id", "amount_minor",
                          "currency", "replayed", "duration_ms", "message")
_KEPT_UNLESS_SENT = frozenset({"amount_minor", "currency"})  # the request's amount stays when the answer has none


def _settled_audit_query(tx: Tx, settles: Sequence[SettleRequest]) -> tuple[str, list] | None:
    ids = sorted({r.audit_id for r in settles})
    if not ids:
        return None
    condition, params = tx.one_of("id", ids)
    return f"SELECT id, outcome FROM audit WHERE {condition}", params


def _settled_audit_rows(settles: Sequence[SettleRequest], rows: Sequence[Row]) -> set[int]:
    """The audit rows among these settlements' that were settled before: a settlement retried
    after a commit whose answer was lost must not count twice."""
    known = {row["id"]: row["outcome"] for row in rows}
    return {audit_id for audit_id in {r.audit_id for r in settles}
            if audit_id not in known or known[audit_id] is not None}


def _write_counters(tx: Tx, changed: Sequence[tuple[str, KeyCounters]]) -> None:
    if changed:
        tx.run_many("UPDATE vault_keys SET spent_micros = ?, reserved_micros = ?, calls = ?, day = ?, "
                    "day_spent_micros = ?, day_reserved_micros = ? WHERE key_id = ?",
                    [(c.spent, c.reserved, c.calls, c.day, c.day_spent, c.day_reserved, key_id)
                     for key_id, c in changed])


def _audit_values(now_text: str, call: CallFacts, key: KeyRecord | None, decision: str, reserved: int,
                  reservation_id: int | None, status: int | None, *, message: str | None = None,
                  amount_minor: int | None = None, currency: str | None = None,
                  duration_ms: float | None = None) -> tuple:
    """An audit row's values, with what a stranger sent bounded."""
    return (now_text, key.key_id if key else None, key.spec.label if key else None, call.vendor,
            _bounded(call.method, 16), _bounded(call.path), status, decision, reserved,
            0 if status is not None else None, _countable(amount_minor), _bounded(currency, 8), _bounded(call.idempotency_key),
            reservation_id, _bounded(message, 2048), duration_ms)


def _bounded(text: str | None, limit: int = AUDIT_TEXT_LIMIT) -> str | None:
    """A stranger's text as the audit keeps it: storable, and at most `limit` characters."""
    if text is None:
        return None
    text = storable(text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _countable(amount: int | None) -> int | None:
    """An amount as the audit keeps it: a 64-bit integer, else unknown (a vendor's JSON can say
    `true`, or more digits than any column holds)."""
    return amount if type(amount) is int and -2**63 < amount < 2**63 else None


def _elapsed_ms(call: CallFacts) -> float | None:
    return None if call.started is None else round((time.monotonic() - call.started) * 1000, 3)


@lru_cache(maxsize=1024)
def _allowlist(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


def _key_state(row: Row) -> KeyState:
    spec = KeySpec(
        vendor=row["vendor"], secret_name=row["secret_name"], label=row["label"],
        daily_cap_micros=row["daily_cap_micros"], total_cap_micros=row["total_cap_micros"],
        max_calls=row["max_calls"], allowlist=_allowlist(row["allowlist"]),
        allow_all=bool(row["allow_all"]), allow_unpriced=bool(row["allow_unpriced"]),
        expires_at=from_text(row["expires_at"]), minted_by=row["minted_by"], budget=row["budget"],
        stripe_account=row["stripe_account"])
    counters = KeyCounters(row["spent_micros"], row["reserved_micros"], row["calls"], row["day"],
                           row["day_spent_micros"], row["day_reserved_micros"])
    return KeyState(row["key_id"], spec, from_text(row["created_at"]), from_text(row["revoked_at"]), counters)


def _reservation(row: Row) -> ReservationState:
    return ReservationState(row["id"], row["key_id"], row["endpoint"], from_text(row["created_at"]), row["state"],
                            row["day"], row["reserved_micros"], row["attempts_open"], row["released_attempts"],
                            row["actual_micros"])


def _audit_clauses(where: AuditFilter, *, key_column: str = "key_id", label_column: str = "label",
                   time_column: str = "ts", since: str | None = None) -> tuple[list[str], list]:
    """WHERE clauses for a filter; `since` is the time as the time column's text (default: to_text)."""
    clauses, params = [], []
    if where.label is not None:
        clauses.append(f"{label_column} = ?")
        params.append(where.label)
    if where.label_prefix is not None:
        # substr, not LIKE: SQLite's LIKE ignores case, and a prefix's % or _ must match only itself.
        clauses.append(f"substr({label_column}, 1, {len(where.label_prefix)}) = ?")
        params.append(where.label_prefix)
    if where.key_id is not None:
        clauses.append(f"{key_column} = ?")
        params.append(where.key_id)
    if where.since is not None:
        clauses.append(f"{time_column} >= ?")
        params.append(since or to_text(where.since))
    if where.minted_by is not None:
        clauses.append(f"{key_column} IN (SELECT v.key_id FROM vault_keys v WHERE v.minted_by = ?)")
        params.append(where.minted_by)
    return clauses, params


def _minted_by(token_id: str | None) -> tuple[str, tuple]:
    """A WHERE clause's tail keeping only the keys one admin token minted (none: every key)."""
    return ("", ()) if token_id is None else (" AND minted_by = ?", (token_id,))


def _gone_before(now: datetime) -> str:
    return to_text(now - RUN_GONE_AFTER)


def _where(clauses: list[str]) -> str:
    return " WHERE " + " AND ".join(clauses) if clauses else ""


def _sealed(row: Row) -> SealedSecret:
    return SealedSecret(row["vendor"], row["name"], bytes(row["nonce"]), bytes(row["ciphertext"]),
                        row["account_sid"], row["auth_user"])


def _token_table(table: str) -> str:
    """A token table's name, checked: it is put into SQL text, never taken from input."""
    if table not in ("admin_tokens", "worker_tokens"):
        raise ValueError(f"not a token table: {table}")
    return table
