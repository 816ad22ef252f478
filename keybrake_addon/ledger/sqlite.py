"""The embedded SQLite ledger.

Every money decision is one `BEGIN IMMEDIATE` transaction: it takes SQLite's write lock before
reading the totals, so no other thread or process can reserve between our read and our write.
That is what keeps a cap exact across parallel calls and several proxy processes.
"""

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from datetime import datetime, timedelta
from pathlib import Path

from .. import policy
from ..vendors import VENDORS
from ..vendors.base import CostEstimate, PricingBasis, Refusal, RefusalKind
from .base import (
    AdmitRequest,
    Admission,
    AuditFilter,
    CallFacts,
    IdempotencyMismatch,
    IssuanceIdempotency,
    KeyRecord,
    KeySpec,
    LedgerBusy,
    LedgerUnavailable,
    Resolution,
    SealedSecret,
    SecretInfo,
    SettleRequest,
)
from .schema import SCHEMA, SCHEMA_VERSION
from .times import from_text, to_text, utc_day, utc_now

BUSY_TIMEOUT_S = 5.0
PAGE_SIZE = 2048
RUN_GONE_AFTER = timedelta(seconds=10)  # a proxy run silent this long is dead (it beats every 2 s)
# A hold whose outcome nobody will report: the vendor answered 5xx or the connection died
# ('unknown'), or the proxy run that made it stopped beating with it still pending.
_UNKNOWN = ("(r.state = 'unknown' OR (r.state = 'pending' AND (r.run_id IS NULL OR r.run_id IN "
            "(SELECT run_id FROM proxy_runs WHERE stopped_at IS NOT NULL OR heartbeat_at < ?))))")
BACKSTOP_CHECKPOINT_PAGES = 40_000  # ~80 MB of WAL, reached only if the checkpoint thread stalls
_ADMIT_LOOKUP = (
    "SELECT k.*, s.nonce, s.ciphertext, s.account_sid, s.auth_user FROM vault_keys k "
    "LEFT JOIN secrets s ON s.vendor = k.vendor AND s.name = k.secret_name WHERE k.key_hash = ?"
)
ISSUANCE_MEMORY = timedelta(hours=24)  # how long an Idempotency-Key returns the same vault key
IDEMPOTENCY_MEMORY = timedelta(hours=24)  # how long Stripe and Resend remember a request's key
OPEN_STATES = ("pending", "unknown")
CAP_HIT_DECISIONS = (RefusalKind.CAP_EXCEEDED.code, RefusalKind.MAX_CALLS_EXCEEDED.code)


class SqliteStore:
    """One SQLite connection in WAL mode, used one transaction at a time."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = BUSY_TIMEOUT_S,
                 background_checkpoints: bool = False) -> None:
        """background_checkpoints: a Checkpointer runs elsewhere, so commits leave the WAL to it."""
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            # Opening may create or check the schema, which needs the write lock for a moment; a
            # connection meant never to wait (busy_timeout_s=0) must still wait for that, or starting
            # several proxies on one home at once fails at random.
            self._db = sqlite3.connect(
                self.path, timeout=max(busy_timeout_s, BUSY_TIMEOUT_S), isolation_level=None,
                check_same_thread=False,
            )
            self._db.row_factory = sqlite3.Row
            # Only a new database takes it. Every commit writes each page it touched into the WAL in
            # full; a call touches ~6 small rows and index entries, so 2 KiB pages halve the bytes
            # written per call (+7% reservations/s measured; see BENCHMARKS.md).
            self._db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash; only an OS crash may lose the last commits.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            found = self._db.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()[0]
            if found != str(SCHEMA_VERSION):
                self._db.close()
                raise LedgerUnavailable(
                    f"{self.path} has schema version {found}; this Keybrake reads version {SCHEMA_VERSION}. "
                    "Use the Keybrake release that created it, or start a new home.")
            if background_checkpoints:
                # A commit that crosses the auto-checkpoint threshold copies the WAL into the database
                # and fsyncs, inside the request that happened to commit. Checkpointing on a thread
                # of its own keeps that off the request path; the high threshold is only a backstop.
                self._db.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_CHECKPOINT_PAGES}")
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        except sqlite3.Error as error:
            raise LedgerUnavailable(f"cannot open the ledger at {self.path}: {error}") from error

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding SQLite's write lock from its first statement."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as error:
                if getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY:
                    raise LedgerBusy(f"the ledger is busy: {error}") from error
                raise LedgerUnavailable(f"the ledger is unavailable: {error}") from error
            try:
                yield self._db
                self._db.execute("COMMIT")
            except sqlite3.Error as error:
                self._rollback()
                raise LedgerUnavailable(f"the ledger is unavailable: {error}") from error
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the transaction is already gone (SQLite rolls back on some errors by itself)

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection for a few reads in a row, translating errors like writes do."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as error:
                raise LedgerUnavailable(f"the ledger is unavailable: {error}") from error

    def query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self.reading() as db:
            return db.execute(sql, params).fetchall()


class SqliteLedger(SqliteStore):
    # --- meta and secrets ---------------------------------------------------------------------

    def get_meta(self, name: str) -> str | None:
        rows = self.query("SELECT value FROM meta WHERE name = ?", (name,))
        return rows[0]["value"] if rows else None

    def set_meta(self, name: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO meta (name, value) VALUES (?, ?) "
                       "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, value))

    def put_secret(self, vendor: str, name: str, nonce: bytes, ciphertext: bytes,
                   fingerprint: str, account_sid: str | None, auth_user: str | None = None) -> None:
        now = to_text(utc_now())
        with self.transaction() as db:
            db.execute(
                "INSERT INTO secrets (vendor, name, nonce, ciphertext, fingerprint, account_sid, auth_user, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (vendor, name) DO UPDATE "
                "SET nonce = excluded.nonce, ciphertext = excluded.ciphertext, fingerprint = excluded.fingerprint, "
                "account_sid = excluded.account_sid, auth_user = excluded.auth_user, updated_at = excluded.updated_at",
                (vendor, name, nonce, ciphertext, fingerprint, account_sid, auth_user, now, now),
            )

    def get_secret(self, vendor: str, name: str) -> SealedSecret | None:
        rows = self.query("SELECT * FROM secrets WHERE vendor = ? AND name = ?", (vendor, name))
        return _sealed(rows[0]) if rows else None

    def list_secrets(self) -> list[SecretInfo]:
        rows = self.query("SELECT * FROM secrets ORDER BY vendor, name")
        return [
            SecretInfo(r["vendor"], r["name"], r["fingerprint"], r["account_sid"], r["auth_user"],
                       from_text(r["created_at"]), from_text(r["updated_at"]))
            for r in rows
        ]

    # --- vault keys ---------------------------------------------------------------------------

    def create_key(self, key_id: str, key_hash: str, spec: KeySpec,
                   idempotency: IssuanceIdempotency | None = None) -> tuple[KeyRecord, bool]:
        """Create a key, or with `idempotency` return the key an earlier identical request created.

        Returns the key and whether it was created now. The check and the insert share one
        transaction, so two retries racing each other still get one key.
        """
        with self.transaction() as db:
            if idempotency is not None:
                earlier = db.execute(
                    "SELECT key_id, request_fingerprint FROM issuances WHERE idempotency_key = ? AND created_at > ?",
                    (idempotency.key, to_text(utc_now() - ISSUANCE_MEMORY))).fetchone()
                if earlier is not None:
                    if earlier["request_fingerprint"] != idempotency.request_fingerprint:
                        raise IdempotencyMismatch(idempotency.key)
                    key_id = earlier["key_id"]
                    row = db.execute("SELECT * FROM vault_keys WHERE key_id = ?", (key_id,)).fetchone()
                    return self._key_record(db, row, utc_now(), with_unknown=True), False
                db.execute("INSERT OR REPLACE INTO issuances (idempotency_key, request_fingerprint, key_id, created_at) "
                           "VALUES (?, ?, ?, ?)",
                           (idempotency.key, idempotency.request_fingerprint, key_id, to_text(utc_now())))
            db.execute(
                "INSERT INTO vault_keys (key_id, key_hash, vendor, secret_name, label, daily_cap_micros, "
                "total_cap_micros, max_calls, allowlist, allow_all, allow_unpriced, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key_id, key_hash, spec.vendor, spec.secret_name, spec.label, spec.daily_cap_micros,
                 spec.total_cap_micros, spec.max_calls, json.dumps(list(spec.allowlist)),
                 int(spec.allow_all), int(spec.allow_unpriced), to_text(utc_now()), to_text(spec.expires_at)),
            )
        record = self.get_key(key_id)
        assert record is not None
        return record, True

    def get_key(self, key_id: str) -> KeyRecord | None:
        with self.reading() as db:
            row = db.execute("SELECT * FROM vault_keys WHERE key_id = ?", (key_id,)).fetchone()
            return self._key_record(db, row, utc_now(), with_unknown=True) if row else None

    def list_keys(self, label: str | None = None, active_at: datetime | None = None) -> list[KeyRecord]:
        clauses, params = [], []
        if label is not None:
            clauses.append("label = ?")
            params.append(label)
        if active_at is not None:
            clauses.append("revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)")
            params.append(to_text(active_at))
        now = utc_now()
        with self.reading() as db:
            rows = db.execute("SELECT * FROM vault_keys" + _where(clauses) + " ORDER BY created_at, key_id",
                              tuple(params)).fetchall()
            return [self._key_record(db, row, now, with_unknown=True) for row in rows]

    def revoke_key(self, key_id: str) -> bool:
        """Revoke one key. Returns False when no such key exists; revoking twice is fine."""
        with self.transaction() as db:
            cursor = db.execute("UPDATE vault_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE key_id = ?",
                                (to_text(utc_now()), key_id))
            return cursor.rowcount > 0

    def revoke_label(self, label: str) -> list[str]:
        with self.transaction() as db:
            ids = [r["key_id"] for r in db.execute("SELECT key_id FROM vault_keys WHERE label = ?", (label,))]
            db.execute("UPDATE vault_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE label = ?",
                       (to_text(utc_now()), label))
            return ids

    def _key_record(self, db: sqlite3.Connection, row: sqlite3.Row, now: datetime,
                    *, with_unknown: bool = False) -> KeyRecord:
        unknown = 0
        if with_unknown:
            unknown = db.execute(
                f"SELECT COALESCE(SUM(reserved_micros), 0) FROM reservations r WHERE key_id = ? AND {_UNKNOWN}",
                (row["key_id"], _gone_before(now)),
            ).fetchone()[0]
        return _key_from_row(row, utc_day(now), unknown)

    # --- the gate -----------------------------------------------------------------------------

    def admit(self, request: AdmitRequest) -> Admission:
        """Check the key and reserve the call's cost against every cap, in one transaction."""
        call = request.call
        with self.transaction() as db:
            row = db.execute(_ADMIT_LOOKUP, (request.key_hash,)).fetchone()
            if row is None:
                refusal = Refusal(RefusalKind.UNKNOWN_KEY,
                                  "This is not a vault key Keybrake knows. Ask the parent job for a key issued by "
                                  "`keybrake issue` or POST /vault/keys.")
                return Admission(self._insert_refusal(db, call, refusal, None), refusal)
            day = utc_day(call.at)
            key = _key_from_row(row, day)
            secret = None if row["nonce"] is None else SealedSecret(
                key.spec.vendor, key.spec.secret_name, row["nonce"], row["ciphertext"], row["account_sid"],
                row["auth_user"])
            refusal = policy.key_refusal(key, call) or policy.account_refusal(key, secret, request.account_ref)
            estimate = request.estimate
            if refusal is None and request.pricing_refusal is not None:
                if request.pricing_refusal.kind is RefusalKind.UNPRICED and key.spec.allow_unpriced:
                    estimate = None  # forwarded with nothing reserved; counted from the response
                else:
                    refusal = request.pricing_refusal
            if refusal is not None:
                return Admission(self._insert_refusal(db, call, refusal, key), refusal, key=key)

            endpoint = f"{call.method} {call.path}"
            idempotency_key = call.idempotency_key
            if idempotency_key is not None:
                existing = db.execute(
                    "SELECT id, endpoint, created_at, state, day, reserved_micros, key_id FROM reservations "
                    "WHERE key_id = ? AND idempotency_key = ?",
                    (key.key_id, idempotency_key),
                ).fetchone()
                if existing is not None and not _same_attempt(existing, endpoint, call.at):
                    # The vendor has forgotten that key, or it names another call: this one may
                    # move money of its own, so it gets a reservation of its own (never attachable).
                    existing, idempotency_key = None, None
                if existing is not None:
                    return self._admit_retry(db, request, key, secret, estimate, existing)

            cost, basis, refusal = self._resolve_cost(db, key, estimate)
            if refusal is None:
                refusal = policy.cap_refusal(key, cost)
            if refusal is not None:
                return Admission(self._insert_refusal(db, call, refusal, key), refusal, key=key)

            reservation_id = db.execute(
                "INSERT INTO reservations (key_id, idempotency_key, endpoint, run_id, day, reserved_micros, state, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                (key.key_id, idempotency_key, endpoint, request.run_id, day, cost, to_text(call.at)),
            ).lastrowid
            _hold_on_key(db, key.key_id, cost, day, new_call=True)
            audit_id = self._insert_audit(db, call, key, "allowed", cost, reservation_id, None,
                                          amount_minor=estimate.amount_minor if estimate else None,
                                          currency=estimate.currency if estimate else None)
            return Admission(audit_id, None, key=key, reservation_id=reservation_id, created_reservation=True,
                             reserved_micros=cost, basis=basis, secret=secret)

    def _admit_retry(self, db: sqlite3.Connection, request: AdmitRequest, key: KeyRecord,
                     secret: SealedSecret | None, estimate: CostEstimate | None,
                     existing: sqlite3.Row) -> Admission:
        """A retry of a call already reserved (same key, endpoint and Idempotency-Key).

        It must not be counted twice, nor slip past the cap: a vendor that saved no result for
        the first attempt (refused before it ran, or never reached) runs the retry for real.
        - released (the first attempt moved no money): the hold opens again, checked like a new call;
        - pending or unknown: attached, topped up under the caps if the retry costs more;
        - settled: attached (the vendor replays the saved result, or refuses other parameters).
        """
        call = request.call
        state = existing["state"]
        if state == "settled":
            audit_id = self._insert_audit(db, call, key, "allowed", 0, existing["id"], None)
            return Admission(audit_id, None, key=key, reservation_id=existing["id"], secret=secret)
        cost, basis, refusal = self._resolve_cost(db, key, estimate)
        reopen = state == "released"
        extra = cost if reopen else max(0, cost - existing["reserved_micros"])
        if refusal is None and extra:
            refusal = policy.cap_refusal(key, extra, new_call=False)
        if refusal is not None:
            return Admission(self._insert_refusal(db, call, refusal, key), refusal, key=key)
        if reopen:
            day = utc_day(call.at)
            db.execute("UPDATE reservations SET state = 'pending', reserved_micros = ?, day = ?, run_id = ?, "
                       "actual_micros = NULL, settled_at = NULL, estimated = 0 WHERE id = ?",
                       (cost, day, request.run_id, existing["id"]))
            _hold_on_key(db, key.key_id, cost, day, new_call=False)
        elif extra:
            db.execute("UPDATE reservations SET reserved_micros = reserved_micros + ? WHERE id = ?",
                       (extra, existing["id"]))
            move_money(db, existing, spent=0, reserved=extra)
        audit_id = self._insert_audit(db, call, key, "allowed", extra, existing["id"], None,
                                      amount_minor=estimate.amount_minor if estimate else None,
                                      currency=estimate.currency if estimate else None)
        return Admission(audit_id, None, key=key, reservation_id=existing["id"], created_reservation=reopen,
                         reserved_micros=extra, basis=basis if reopen else None, secret=secret)

    def _resolve_cost(self, db: sqlite3.Connection, key: KeyRecord,
                      estimate: CostEstimate | None) -> tuple[int, PricingBasis, Refusal | None]:
        """The amount to reserve, and how the response should be counted against it."""
        if estimate is None or estimate.basis is PricingBasis.FIXED:
            return (estimate.usd_micros if estimate else 0), PricingBasis.FIXED, None
        counted = db.execute(
            "SELECT actual_micros FROM reservations WHERE object_id = ? AND state = 'settled' ORDER BY id LIMIT 1",
            (estimate.object_ref,),
        ).fetchone()
        if counted is not None:
            if estimate.basis is PricingBasis.ALREADY_COUNTED:
                return 0, PricingBasis.ALREADY_COUNTED, None
            return counted["actual_micros"], PricingBasis.FIXED, None
        if key.spec.allow_unpriced:
            return 0, PricingBasis.FIXED, None
        return 0, PricingBasis.FIXED, Refusal(RefusalKind.UNPRICED,
                          f"Keybrake cannot price this call: {estimate.object_ref} was not created through "
                          "Keybrake, so its amount is unknown. A key issued with allow_unpriced forwards it "
                          "anyway and counts it from the response.")

    def record_refusal(self, call: CallFacts, refusal: Refusal) -> int:
        with self.transaction() as db:
            return self._insert_refusal(db, call, refusal, None)

    def _insert_refusal(self, db: sqlite3.Connection, call: CallFacts, refusal: Refusal,
                        key: KeyRecord | None) -> int:
        # The status the vendor-shaped answer carries (Resend answers a refused key with 403).
        status = VENDORS[call.vendor].refusal_status(refusal.kind)
        return self._insert_audit(db, call, key, refusal.kind.code, 0, None, status, message=refusal.message,
                                  duration_ms=_elapsed_ms(call))

    def _insert_audit(self, db: sqlite3.Connection, call: CallFacts, key: KeyRecord | None, decision: str,
                      reserved: int, reservation_id: int | None, status: int | None, *,
                      message: str | None = None, amount_minor: int | None = None,
                      currency: str | None = None, duration_ms: float | None = None) -> int:
        return db.execute(
            "INSERT INTO audit (ts, key_id, label, vendor, method, path, status, decision, reserved_micros, "
            "actual_micros, amount_minor, currency, idempotency_key, reservation_id, message, duration_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (to_text(call.at), key.key_id if key else None, key.spec.label if key else None, call.vendor,
             call.method, call.path, status, decision, reserved, 0 if status is not None else None,
             amount_minor, currency, call.idempotency_key, reservation_id, message, duration_ms),
        ).lastrowid

    def settle(self, request: SettleRequest) -> None:
        """Apply a response to its reservation and complete the audit row. Idempotent per reservation."""
        now = utc_now()
        with self.transaction() as db:
            reservation = db.execute("SELECT * FROM reservations WHERE id = ?", (request.reservation_id,)).fetchone()
            if reservation is None:
                return
            call_actual = 0
            outcome = request.resolution.value
            first_object = request.object_ids[0] if request.object_ids else None
            state = reservation["state"]
            # A retry's answer after the first attempt's release (its settlement landed while the
            # retry was in flight): money may have moved after all, so it is counted again.
            revived = state == "released" and request.resolution in (Resolution.SETTLE, Resolution.UNKNOWN)
            if (state in OPEN_STATES or revived) and request.resolution is not Resolution.LEAVE:
                estimate = reservation["reserved_micros"]
                held = 0 if revived else estimate
                if request.resolution is Resolution.SETTLE:
                    call_actual = estimate if request.actual_micros is None else request.actual_micros
                    move_money(db, reservation, spent=call_actual, reserved=-held)
                elif request.resolution is Resolution.RELEASE:
                    move_money(db, reservation, spent=0, reserved=-held)
                elif revived:  # UNKNOWN: the hold counts again until the outcome is known
                    move_money(db, reservation, spent=0, reserved=estimate)
                closed = request.resolution is not Resolution.UNKNOWN
                db.execute(
                    "UPDATE reservations SET state = ?, actual_micros = ?, object_id = COALESCE(?, object_id), "
                    "settled_at = ?, estimated = ? WHERE id = ?",
                    (request.resolution.value,
                     call_actual if request.resolution is Resolution.SETTLE else None,
                     first_object, to_text(now) if closed else None,
                     int(request.resolution is Resolution.SETTLE and request.actual_micros is None),
                     request.reservation_id),
                )
            elif reservation["state"] not in OPEN_STATES:
                outcome = "already_" + reservation["state"]
            db.execute(
                "UPDATE audit SET status = ?, outcome = ?, actual_micros = ?, object_id = ?, vendor_request_id = ?, "
                "amount_minor = COALESCE(?, amount_minor), currency = COALESCE(?, currency), replayed = ?, "
                "duration_ms = ?, message = ? WHERE id = ?",
                (request.status, outcome, call_actual, " ".join(request.object_ids) or None,
                 request.vendor_request_id, request.amount_minor, request.currency, int(request.replayed),
                 round(request.duration_ms, 3), request.error, request.audit_id),
            )

    # --- reports ------------------------------------------------------------------------------

    def audit_rows(self, where: AuditFilter) -> list[dict]:
        clauses, params = _audit_clauses(where)
        sql = "SELECT * FROM audit" + _where(clauses) + " ORDER BY id"
        if where.limit:
            sql += f" LIMIT {int(where.limit)}"
        return [dict(row) for row in self.query(sql, tuple(params))]

    def spend(self, by: str, where: AuditFilter) -> list[dict]:
        """Totals per group: calls and refusals from the audit, money from the reservations."""
        audit_group = {"key": "key_id", "label": "label", "vendor": "vendor", "day": "substr(ts, 1, 10)"}[by]
        clauses, params = _audit_clauses(where)
        calls = self.query(
            f"SELECT {audit_group} AS grp, COUNT(*) AS calls, SUM(decision = 'allowed') AS allowed, "
            "SUM(decision != 'allowed') AS refused, "
            f"SUM(decision IN {CAP_HIT_DECISIONS!r}) AS cap_hits "
            "FROM audit" + _where(clauses) + " GROUP BY grp", tuple(params))
        money_group = {"key": "r.key_id", "label": "k.label", "vendor": "k.vendor", "day": "r.day"}[by]
        clauses, params = _audit_clauses(where, key_column="r.key_id", label_column="k.label",
                                         time_column="r.created_at")
        money = self.query(
            f"SELECT {money_group} AS grp, "
            "COALESCE(SUM(CASE WHEN r.state = 'settled' THEN r.actual_micros END), 0) AS spent_micros, "
            "COALESCE(SUM(CASE WHEN r.state IN ('pending', 'unknown') THEN r.reserved_micros END), 0) "
            "AS reserved_micros "
            "FROM reservations r JOIN vault_keys k ON k.key_id = r.key_id" + _where(clauses) + " GROUP BY grp",
            tuple(params))
        totals: dict = {}
        empty = {"calls": 0, "allowed": 0, "refused": 0, "cap_hits": 0, "spent_micros": 0, "reserved_micros": 0}
        for row in calls:
            totals[row["grp"]] = {by: row["grp"], **empty,
                                  **{name: row[name] for name in ("calls", "allowed", "refused", "cap_hits")}}
        for row in money:
            entry = totals.setdefault(row["grp"], {by: row["grp"], **empty})
            entry["spent_micros"] = row["spent_micros"]
            entry["reserved_micros"] = row["reserved_micros"]
        return [totals[group] for group in sorted(totals, key=lambda g: (g is None, g or ""))]

    def open_reservations(self, key_id: str) -> list[dict]:
        """Holds not yet settled; `state` is `unknown` too for a pending hold whose proxy run is gone."""
        rows = self.query(
            f"SELECT r.*, CASE WHEN {_UNKNOWN} THEN 'unknown' ELSE r.state END AS shown_state FROM reservations r "
            "WHERE key_id = ? AND r.state IN ('pending', 'unknown') ORDER BY id", (_gone_before(utc_now()), key_id))
        return [{**dict(row), "state": row["shown_state"]} for row in rows]


def _audit_clauses(where: AuditFilter, *, key_column: str = "key_id", label_column: str = "label",
                   time_column: str = "ts") -> tuple[list[str], list]:
    clauses, params = [], []
    if where.label is not None:
        clauses.append(f"{label_column} = ?")
        params.append(where.label)
    if where.key_id is not None:
        clauses.append(f"{key_column} = ?")
        params.append(where.key_id)
    if where.since is not None:
        clauses.append(f"{time_column} >= ?")
        params.append(to_text(where.since))
    return clauses, params


def _elapsed_ms(call: CallFacts) -> float | None:
    return None if call.started is None else round((time.monotonic() - call.started) * 1000, 3)


def _same_attempt(reservation: sqlite3.Row, endpoint: str, at: datetime) -> bool:
    """Whether a request with the same Idempotency-Key retries this reservation's call.

    Vendors keep idempotency keys for 24 hours and scope them to one request; past that, or on
    another endpoint, the same key is a new call.
    """
    return reservation["endpoint"] == endpoint and from_text(reservation["created_at"]) > at - IDEMPOTENCY_MEMORY


def _hold_on_key(db: sqlite3.Connection, key_id: str, cost: int, day: str, *, new_call: bool) -> None:
    """Count a new hold on the key's counters, starting the daily ones afresh on a new UTC day."""
    db.execute(
        f"UPDATE vault_keys SET reserved_micros = reserved_micros + ?, {'calls = calls + 1, ' if new_call else ''}"
        "day_spent_micros = CASE WHEN day = ? THEN day_spent_micros ELSE 0 END, "
        "day_reserved_micros = CASE WHEN day = ? THEN day_reserved_micros ELSE 0 END + ?, day = ? "
        "WHERE key_id = ?", (cost, day, day, cost, day, key_id))


def move_money(db: sqlite3.Connection, reservation: sqlite3.Row, *, spent: int, reserved: int) -> None:
    """Shift a reservation's amounts between reserved and spent on the key's counters.

    The daily counters move only while the key's current day is the reservation's day: a hold
    from an earlier day no longer counts against today's cap.
    """
    db.execute(
        "UPDATE vault_keys SET spent_micros = spent_micros + ?, reserved_micros = reserved_micros + ?, "
        "day_spent_micros = day_spent_micros + CASE WHEN day = ? THEN ? ELSE 0 END, "
        "day_reserved_micros = day_reserved_micros + CASE WHEN day = ? THEN ? ELSE 0 END WHERE key_id = ?",
        (spent, reserved, reservation["day"], spent, reservation["day"], reserved, reservation["key_id"]))


@lru_cache(maxsize=1024)
def _allowlist(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


def _key_from_row(row: sqlite3.Row, today: str, unknown: int = 0) -> KeyRecord:
    spec = KeySpec(
        vendor=row["vendor"], secret_name=row["secret_name"], label=row["label"],
        daily_cap_micros=row["daily_cap_micros"], total_cap_micros=row["total_cap_micros"],
        max_calls=row["max_calls"], allowlist=_allowlist(row["allowlist"]),
        allow_all=bool(row["allow_all"]), allow_unpriced=bool(row["allow_unpriced"]),
        expires_at=from_text(row["expires_at"]),
    )
    current = row["day"] == today
    return KeyRecord(
        key_id=row["key_id"], spec=spec, created_at=from_text(row["created_at"]),
        revoked_at=from_text(row["revoked_at"]), spent_micros=row["spent_micros"],
        reserved_micros=row["reserved_micros"], calls=row["calls"],
        today_spent_micros=row["day_spent_micros"] if current else 0,
        today_reserved_micros=row["day_reserved_micros"] if current else 0, unknown_micros=unknown,
    )


def _gone_before(now: datetime) -> str:
    return to_text(now - RUN_GONE_AFTER)


def _where(clauses: list[str]) -> str:
    return " WHERE " + " AND ".join(clauses) if clauses else ""


def _sealed(row: sqlite3.Row) -> SealedSecret:
    return SealedSecret(row["vendor"], row["name"], row["nonce"], row["ciphertext"], row["account_sid"],
                        row["auth_user"])
