"""The contract every vendor module fulfils: pure functions, no I/O.

A vendor module turns a request into a credential and a cost estimate, a response into an
outcome, and a refusal into a response the vendor's own SDK understands.
"""

import re
from collections.abc import Iterable, Mapping
from dataclasses import field
from enum import Enum

from ..records import frozen


@frozen
class VendorRequest:
    method: str
    path: str  # without the query string
    query: str
    headers: Mapping[str, str]  # names lower-cased
    body: bytes
    # Single-valued headers the request carried on more than one line (lower-cased): `headers`
    # keeps one of their values while every line reaches the vendor, so the gate refuses them.
    repeated_headers: tuple[str, ...] = ()
    # Header lines that are not well formed (malformed_header_lines): refused, like repeated ones.
    malformed_headers: tuple[str, ...] = ()


# Headers whose value decides who pays, for what, whether a call is a retry, and how its body
# reads; a second line of one could make the vendor read another value than the one Keybrake checked.
SINGLE_VALUED_HEADERS = frozenset({"authorization", "idempotency-key", "stripe-account", "content-type",
                                   "content-length", "content-encoding", "transfer-encoding"})


def repeated_single_valued_headers(fields: Iterable[tuple[bytes | str, bytes | str]]) -> tuple[str, ...]:
    """The single-valued header names that occur on more than one line of `fields` (raw header
    lines, any case), lower-cased and sorted."""
    seen: set[str] = set()
    repeated: set[str] = set()
    for raw_name, _ in fields:
        name = (raw_name.decode("latin-1") if isinstance(raw_name, bytes) else raw_name).strip().lower()
        if name in SINGLE_VALUED_HEADERS:
            (repeated if name in seen else seen).add(name)
    return tuple(sorted(repeated))


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def malformed_header_lines(fields: Iterable[tuple[bytes, bytes]]) -> tuple[str, ...]:
    """The names (made printable) of header lines that are not well formed: a name that is not
    an HTTP token (`Stripe-Account :` with a space before the colon), or a value holding a line
    break (an obsolete folded line) or a NUL. mitmproxy forwards such lines as they came, and a
    lenient server could read `Stripe-Account` where the gate saw another name, or unfold a value
    the gate read whole."""
    malformed = []
    for name, value in fields:
        if not _TOKEN.fullmatch(name) or any(c in value for c in (b"\r", b"\n", b"\0")):
            malformed.append(name.decode("latin-1").encode("unicode_escape").decode("ascii")[:40])
    return tuple(malformed[:5])  # enough to name the trouble in a refusal


@frozen
class VendorResponse:
    status: int
    headers: Mapping[str, str]  # names lower-cased
    body: bytes


@frozen
class PresentedCredential:
    """What the client sent where the vendor secret normally goes."""

    token: str


class PricingBasis(Enum):
    FIXED = "fixed"  # usd_micros is the estimate
    ALREADY_COUNTED = "already_counted"  # free if the ledger counted object_ref, else unpriced
    COUNTED_AMOUNT = "counted_amount"  # costs what the ledger counted for object_ref


@frozen
class CostEstimate:
    usd_micros: int = 0
    basis: PricingBasis = PricingBasis.FIXED
    object_ref: str | None = None
    amount_minor: int | None = None
    currency: str | None = None
    # The body to forward instead of the client's, when the price holds only with a change to
    # the request (Twilio: a call priced at max_call_minutes gets that TimeLimit). None: as sent.
    forward_body: bytes | None = None


@frozen
class Outcome:
    """What a vendor response says happened."""

    usd_micros: int | None  # what this response says was spent; None when it does not say
    object_ids: tuple[str, ...] = ()
    amount_minor: int | None = None
    currency: str | None = None
    replayed: bool = False
    vendor_request_id: str | None = None


class Unpriced(Exception):
    """The cost of this call cannot be determined from the request alone."""


class UnknownCurrency(Unpriced):
    pass


class MalformedRequest(Exception):
    """The request cannot be priced because it is not valid (the vendor would refuse it too)."""


class OtherAccount(Exception):
    """The request names an account in a way no vault key can be checked against (Stripe's
    Stripe-Context, which can name any account of a platform or an organisation)."""


class CredentialEndpoint(Exception):
    """The endpoint reveals or mints vendor credentials: no vault key may reach it, whatever its
    allowlist, or the worker would walk away with a real secret."""


class RefusalKind(Enum):
    MISSING_KEY = ("keybrake_missing_key", 401)
    UNKNOWN_KEY = ("keybrake_unknown_key", 401)
    KEY_EXPIRED = ("keybrake_key_expired", 401)
    KEY_REVOKED = ("keybrake_key_revoked", 401)
    BUDGET_FROZEN = ("keybrake_budget_frozen", 401)  # like a revoked key, until the budget is unfrozen
    WRONG_VENDOR = ("keybrake_wrong_vendor", 401)
    REAL_SECRET = ("keybrake_real_secret_refused", 401)
    ACCOUNT_MISMATCH = ("keybrake_account_mismatch", 403)
    NOT_ALLOWED = ("keybrake_endpoint_not_allowed", 403)
    UNPRICED = ("keybrake_unpriced_endpoint", 403)
    UNKNOWN_CURRENCY = ("keybrake_unknown_currency", 403)
    INVALID_REQUEST = ("keybrake_invalid_request", 400)
    CAP_EXCEEDED = ("keybrake_cap_exceeded", 429)
    MAX_CALLS_EXCEEDED = ("keybrake_max_calls_exceeded", 429)
    EGRESS_DENIED = ("keybrake_egress_denied", 403)
    CREDENTIAL_ENDPOINT = ("keybrake_credential_endpoint", 403)
    UNAVAILABLE = ("keybrake_unavailable", 503)

    @property
    def code(self) -> str:
        return self.value[0]

    @property
    def status(self) -> int:
        return self.value[1]

    @property
    def is_cap_hit(self) -> bool:
        return self in (RefusalKind.CAP_EXCEEDED, RefusalKind.MAX_CALLS_EXCEEDED)


@frozen
class Refusal:
    kind: RefusalKind
    message: str  # must never contain a secret or a vault key
    retry_after_s: int | None = None
    cap: str | None = None  # the cap hit, for `x-keybrake-cap`: "key" or "budget:NAME"


@frozen
class RenderedResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
