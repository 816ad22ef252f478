"""The ledger's records: what callers hand it and what it answers, whatever the backend."""

from collections.abc import Callable, Sequence
from dataclasses import field
from datetime import datetime
from enum import Enum
from typing import Protocol

from ..records import frozen
from ..vendors.base import CostEstimate, PricingBasis, Refusal, RefusalKind


# Refusals of a request that holds no valid vault key: whoever sent it need not be anyone we know.
# Refusals of a caller who showed no key of ours: audited within the bounds of keyless_refusals.py.
# A revoked or expired key is not among them: it was a real key (a secret no stranger has), and
# its refusals stay in its own audit trail, one row each, so `audit --key` shows every attempt.
NO_VALID_KEY = frozenset({RefusalKind.UNKNOWN_KEY})


class LedgerUnavailable(Exception):
    """The store cannot answer (locked, full, read-only, corrupt). Nothing may be forwarded."""


class LedgerConflict(LedgerUnavailable):
    """The database aborted a transaction to break a deadlock or a serialisation conflict:
    running it again is safe."""


class LedgerRefusedValue(LedgerUnavailable):
    """The database answered that a value in the transaction cannot be stored (PostgreSQL's
    DataError: a number past bigint, say). It rolled back, and it is up: the fault is one item's,
    so a batch is tried again item by item, and the ledger is not taken for down."""


class LedgerBusy(LedgerUnavailable):
    """Another writer holds the database lock (for longer than this connection waits)."""


class CommitOutcomeLost(LedgerUnavailable):
    """The COMMIT went out and no answer came back (the server went down with it): the batch may
    have committed. Its admits were refused all the same, so nothing was forwarded; `admissions`
    are the holds it would have answered with, to be released (a no-op where it did not commit)."""

    def __init__(self, message: str, admissions: Sequence["Admission"]) -> None:
        super().__init__(message)
        self.admissions = tuple(admissions)


class IdempotencyMismatch(Exception):
    """An Idempotency-Key was reused with a different request."""


# The issuer of idempotency records made before admin tokens were recorded (schema 6): only an
# unrestricted token replays them, since every token that could have made one was unrestricted.
UNATTRIBUTED_ISSUER = "unattributed"


@frozen
class IssuanceIdempotency:
    key: str
    request_fingerprint: str  # a hash of the request body: the same key must mean the same request
    token_id: str  # the admin token asking: its Idempotency-Keys are its own, never another token's
    replays_unattributed: bool = False  # an unrestricted token also answers records older than schema 6


class Resolution(Enum):
    SETTLE = "settled"  # the outcome is known: count the actual amount
    RELEASE = "released"  # no money moved: give the hold back
    UNKNOWN = "unknown"  # money may have moved: keep the hold counted
    LEAVE = "leave"  # this response says nothing new about the reservation


@frozen
class KeySpec:
    vendor: str
    secret_name: str
    label: str | None
    daily_cap_micros: int | None
    total_cap_micros: int | None
    max_calls: int | None
    allowlist: tuple[str, ...]
    allow_all: bool
    allow_unpriced: bool
    expires_at: datetime | None
    minted_by: str | None = None  # the admin token that minted it; None: the CLI (or before schema 6)
    budget: str | None = None  # the budget the key spends from (and, through it, its ancestors')
    # Stripe Connect: the connected account (acct_...) every call of this key acts for, through the
    # Stripe-Account header; None: the platform account itself, and no Stripe-Account at all.
    stripe_account: str | None = None


@frozen
class KeyRecord:
    key_id: str
    spec: KeySpec
    created_at: datetime
    revoked_at: datetime | None
    spent_micros: int
    reserved_micros: int
    calls: int
    today_spent_micros: int
    today_reserved_micros: int
    unknown_micros: int = 0  # part of reserved_micros whose outcome is not known

    def status(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.spec.expires_at is not None and now >= self.spec.expires_at:
            return "expired"
        return "active"

    def remaining_micros(self) -> int | None:
        """Headroom under the tightest cap; None when the key has no dollar cap."""
        limits = []
        if self.spec.total_cap_micros is not None:
            limits.append(self.spec.total_cap_micros - self.spent_micros - self.reserved_micros)
        if self.spec.daily_cap_micros is not None:
            limits.append(self.spec.daily_cap_micros - self.today_spent_micros - self.today_reserved_micros)
        return max(0, min(limits)) if limits else None


@frozen
class SealedSecret:
    vendor: str
    name: str
    nonce: bytes
    ciphertext: bytes
    account_sid: str | None  # the vendor account the secret belongs to (Twilio's AC...)
    auth_user: str | None  # the user to send with it, when not the account (Twilio's API key SK...)


@frozen
class SecretInfo:
    vendor: str
    name: str
    fingerprint: str
    account_sid: str | None
    auth_user: str | None
    created_at: datetime
    updated_at: datetime


@frozen
class CallFacts:
    """What the audit row records about a request, whatever the decision."""

    vendor: str
    method: str
    path: str
    idempotency_key: str | None
    at: datetime
    started: float | None = None  # time.monotonic() when the request arrived: a refusal's duration
    # The vendor's status for a refusal (Resend answers a refused key with 403, not 401), so the
    # audit row records the status the client got.
    refusal_status: Callable[[RefusalKind], int] | None = field(default=None, compare=False)

    def status_of(self, kind: RefusalKind) -> int:
        return self.refusal_status(kind) if self.refusal_status is not None else kind.status


@frozen
class AdmitRequest:
    key_hash: str
    call: CallFacts
    estimate: CostEstimate | None  # None when pricing failed: see pricing_refusal
    pricing_refusal: Refusal | None = None
    account_ref: str | None = None  # the vendor account the request names; must be the secret's
    run_id: str | None = None  # the proxy run reserving, whose heartbeat says it may still settle
    # False: a refusal in NO_VALID_KEY writes no audit row, and the caller records it (the gate
    # bounds how many rows a client without a valid key gets: keyless_refusals.py).
    audit_invalid_key: bool = True
    connected_account: str | None = None  # Stripe-Account's value, if sent; must be the key's stripe_account


@frozen
class Admission:
    audit_id: int | None  # None for a refusal whose row the caller records (AdmitRequest.audit_invalid_key)
    refusal: Refusal | None
    key: KeyRecord | None = None
    reservation_id: int | None = None
    opened: bool = False
    reserved_micros: int = 0
    basis: PricingBasis | None = None  # how to count the response; None for a retry that attached
    secret: SealedSecret | None = None
    # The headroom under the key's budgets when it was admitted, before its own hold (as `key`);
    # None when the key has no budget or no budget of its chain has a cap.
    budget_headroom_micros: int | None = None

    @property
    def allowed(self) -> bool:
        return self.refusal is None


@frozen
class SettleRequest:
    audit_id: int
    reservation_id: int
    resolution: Resolution
    actual_micros: int | None  # for SETTLE
    status: int | None
    object_ids: tuple[str, ...]
    vendor_request_id: str | None
    amount_minor: int | None
    currency: str | None
    replayed: bool
    duration_ms: float
    error: str | None = None
    # This attempt opened the reservation's hold. A replay to it may be of a result the vendor
    # saved before the reservation existed; a replay to a retry is of this reservation's own call.
    opened: bool = False


@frozen
class AuditFilter:
    label: str | None = None
    key_id: str | None = None
    since: datetime | None = None
    limit: int | None = None
    minted_by: str | None = None  # only keys this admin token minted (a scoped token's view)
    label_prefix: str | None = None  # labels starting with it, taken literally (no wildcards)
    newest_first: bool = False  # with limit: the newest rows, newest first
    after_id: int | None = None  # only rows with a larger id...
    also_ids: tuple[int, ...] = ()  # ...or one of these ids (a follower waiting for a late commit)


class Ledger(Protocol):
    """What issuing keys and storing secrets need of the ledger (store.SqlLedger is the ledger)."""

    def get_meta(self, name: str) -> str | None: ...
    def set_meta(self, name: str, value: str) -> None: ...
    def put_secret(self, vendor: str, name: str, nonce: bytes, ciphertext: bytes,
                   fingerprint: str, account_sid: str | None, auth_user: str | None = None) -> None: ...
    def get_secret(self, vendor: str, name: str) -> SealedSecret | None: ...
    def list_secrets(self) -> list[SecretInfo]: ...
    def keys_using_secret(self, vendor: str, name: str) -> list["KeyRecord"]: ...
    def delete_secret(self, vendor: str, name: str, *, force: bool = False) -> tuple[bool, list["KeyRecord"]]: ...
    def create_key(self, key_id: str, key_hash: str, spec: KeySpec,
                   idempotency: IssuanceIdempotency | None = None) -> tuple[KeyRecord, bool]: ...
