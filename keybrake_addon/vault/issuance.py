"""Issuing vault keys: validate the request, derive the key, store only its hash."""

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from ..durations import InvalidDuration, parse_duration
from ..ledger.base import IssuanceIdempotency, KeyRecord, KeySpec, Ledger
from ..ledger.times import utc_now
from ..vendors import VENDORS
from ..vendors.stripe import CONNECTED_ACCOUNT_ID
from ..text import has_control_characters
from .allowlist import validate_patterns
from .budgets import BudgetError, budget_caps, check_name
from .key_lifetimes import InvalidSetting, KeyLifetimes, read_lifetimes
from .scopes import Issuer, OverCeiling, check_ceilings, check_source
from .crypto import derive_subkey
from .vault_keys import derive_vault_key, hash_vault_key, new_key_id

DERIVATION_PURPOSE = "vault-key-derivation"


class IssueError(ValueError):
    """The key request is not acceptable; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


@dataclass(frozen=True)
class KeyRequest:
    vendor: str
    secret_name: str = "default"
    label: str | None = None
    daily_cap_micros: int | None = None
    total_cap_micros: int | None = None
    max_calls: int | None = None
    allowlist: tuple[str, ...] = ()
    allow_all: bool = False
    no_cap: bool = False
    allow_unpriced: bool = False
    expires_in: str | None = None
    budget: str | None = None  # the budget it spends from (its caps, and its ancestors', apply too)
    stripe_account: str | None = None  # Stripe Connect: the one connected account the key acts for


@dataclass(frozen=True)
class IssuedKey:
    key_id: str
    vault_key: str
    record: KeyRecord
    created: bool = True  # False when an Idempotency-Key returned an earlier key


def issue_key(ledger: Ledger, master_key: bytes, request: KeyRequest, *, now: datetime | None = None,
              idempotency: IssuanceIdempotency | None = None, issuer: Issuer | None = None) -> IssuedKey:
    """Issue a key. With `idempotency`, a repeat of the same request gets the same key back.

    `issuer` is the admin token asking (None: the CLI): the key records it, and a scoped
    token's ceilings are checked, raising OverCeiling naming the field.
    """
    now = now or utc_now()
    if issuer is not None and issuer.problem is not None:
        raise OverCeiling("scope", f"this admin token's scope is unreadable ({issuer.problem}); it mints nothing")
    if issuer is not None and issuer.scope is not None:
        # Before validation, which names the stored secrets: a scoped token learns none outside its own.
        check_source(issuer.scope, request.vendor, request.secret_name)
    spec = validate(ledger, request, now)
    if issuer is not None:
        if issuer.scope is not None:
            default_ttl = read_lifetimes(ledger).default_ttl if request.expires_in is None else None
            lineage = budget_caps(ledger, spec.budget) if spec.budget is not None else None
            check_ceilings(issuer.scope, spec, now=now, default_ttl=default_ttl,
                           budget_lineage=[b.name for b in lineage or ()],
                           budget_capped=any(b.daily_cap_micros is not None or b.total_cap_micros is not None
                                             for b in lineage or ()))
        spec = replace(spec, minted_by=issuer.token_id)
    derivation_key = derive_subkey(master_key, DERIVATION_PURPOSE)
    key_id = new_key_id()
    record, created = ledger.create_key(key_id, hash_vault_key(derive_vault_key(derivation_key, spec.vendor, key_id)),
                                        spec, idempotency)
    # The vault key is never stored: an earlier key is derived again from its id.
    vault_key = derive_vault_key(derivation_key, record.spec.vendor, record.key_id)
    return IssuedKey(record.key_id, vault_key, record, created)


def validate(ledger: Ledger, request: KeyRequest, now: datetime) -> KeySpec:
    # Stored and shown back in `keys list`, `audit` and the vault API: no text a terminal would act on.
    for field, text in (("label", request.label), ("secret", request.secret_name)):
        if text is not None and has_control_characters(text):
            raise IssueError(field, "must not contain control characters (newlines, tabs, escapes)")
    if request.vendor not in VENDORS:
        raise IssueError("vendor", f"unknown vendor {request.vendor!r}; choose one of {', '.join(sorted(VENDORS))}")
    if ledger.get_secret(request.vendor, request.secret_name) is None:
        raise IssueError("secret", f"no {request.vendor} secret named {request.secret_name!r} is stored; "
                                   f"run `keybrake secret set {request.vendor} --name {request.secret_name}` first")
    for field, value in (("daily_usd_cap", request.daily_cap_micros), ("total_usd_cap", request.total_cap_micros),
                         ("max_calls", request.max_calls)):
        if value is not None and value < 0:
            raise IssueError(field, "must not be negative")
    budget_capped = _budget_capped(ledger, request.budget)  # also refuses a budget that does not exist
    has_cap = request.daily_cap_micros is not None or request.total_cap_micros is not None
    if not has_cap and not request.no_cap and not budget_capped:
        raise IssueError("daily_usd_cap", "a key needs a daily or total USD cap, of its own or from a capped "
                                          "--budget (or, knowingly, --no-cap)")
    if has_cap and request.no_cap:
        raise IssueError("no_cap", "--no-cap contradicts the cap given")
    if not request.allowlist and not request.allow_all:
        raise IssueError("allowed_endpoints",
                         'a key needs at least one --allow "METHOD /path" (or, knowingly, --allow-all)')
    try:
        allowlist = tuple(validate_patterns(list(request.allowlist)))
    except ValueError as error:
        raise IssueError("allowed_endpoints", str(error)) from None
    _check_stripe_account(request)
    # Whole seconds, rounded down: the expiry shown (ISO to the second) is the one enforced.
    expires_at = (now + _lifetime(ledger, request.expires_in)).replace(microsecond=0)
    return KeySpec(
        vendor=request.vendor, secret_name=request.secret_name, label=request.label,
        daily_cap_micros=request.daily_cap_micros, total_cap_micros=request.total_cap_micros,
        max_calls=request.max_calls, allowlist=allowlist, allow_all=request.allow_all,
        allow_unpriced=request.allow_unpriced, expires_at=expires_at, budget=request.budget,
        stripe_account=request.stripe_account,
    )


def _budget_capped(ledger: Ledger, budget: str | None) -> bool:
    """Whether the key's budget (or an ancestor) has a dollar cap. Refuses a budget that does not exist."""
    if budget is None:
        return False
    try:
        check_name(budget, "budget")
    except BudgetError as failure:
        raise IssueError("budget", failure.reason) from None
    lineage = budget_caps(ledger, budget)
    if lineage is None:
        raise IssueError("budget", f"no budget named {budget!r}; create it with `keybrake budget create {budget}`")
    return any(b.daily_cap_micros is not None or b.total_cap_micros is not None for b in lineage)


def _check_stripe_account(request: KeyRequest) -> None:
    account = request.stripe_account
    if account is None:
        return
    if request.vendor != "stripe":
        raise IssueError("stripe_account", f"only Stripe keys act for a connected account, not {request.vendor} keys")
    if not CONNECTED_ACCOUNT_ID.fullmatch(account):
        raise IssueError("stripe_account", "expected a Stripe account id: acct_ and up to 64 letters and digits")


def _lifetime(ledger: Ledger, expires_in: str | None) -> timedelta:
    """The key's TTL: the one asked for, else the installation's default; never over its maximum."""
    try:
        lifetimes = read_lifetimes(ledger)
    except InvalidSetting as failure:
        raise IssueError("expires_in", str(failure)) from None
    if expires_in is None:
        ttl, asked = lifetimes.default, f"the default TTL {lifetimes.default_ttl}"
    else:
        try:
            ttl, asked = parse_duration(expires_in), expires_in.strip()
        except InvalidDuration as failure:
            raise IssueError("expires_in", str(failure)) from None
    if ttl > lifetimes.maximum:
        raise IssueError("expires_in", _over_maximum(asked, lifetimes))
    return ttl


def _over_maximum(asked: str, lifetimes: KeyLifetimes) -> str:
    return (f"{asked} is longer than this installation's maximum key lifetime ({lifetimes.max_ttl}); "
            f"issue a shorter-lived key, or have the operator raise it with "
            f"`keybrake settings set max-key-ttl <duration>`")
