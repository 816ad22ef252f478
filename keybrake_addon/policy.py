"""The rules a vault key imposes on a call. Pure: the ledger applies them inside its transaction."""

from datetime import datetime

from .ledger.base import CallFacts, KeyRecord, SealedSecret
from .money import format_usd
from .vault.allowlist import is_allowed
from .vendors.base import Refusal, RefusalKind


def key_refusal(key: KeyRecord, call: CallFacts) -> Refusal | None:
    """Why this key may not make this call at all, before any money is considered."""
    if key.revoked_at is not None:
        return Refusal(RefusalKind.KEY_REVOKED,
                       f"Keybrake vault key {key.key_id} was revoked at {iso(key.revoked_at)}. "
                       "Ask the parent job for a new key.")
    if key.spec.expires_at is not None and call.at >= key.spec.expires_at:
        return Refusal(RefusalKind.KEY_EXPIRED,
                       f"Keybrake vault key {key.key_id} expired at {iso(key.spec.expires_at)}. "
                       "Ask the parent job for a new key.")
    if key.spec.vendor != call.vendor:
        return Refusal(RefusalKind.WRONG_VENDOR,
                       f"Keybrake vault key {key.key_id} is for {key.spec.vendor}, not {call.vendor}.")
    if not key.spec.allow_all and not is_allowed(key.spec.allowlist, call.method, call.path):
        return Refusal(RefusalKind.NOT_ALLOWED,
                       f"Keybrake vault key {key.key_id} does not allow {call.method} {call.path}. "
                       f"It allows: {', '.join(key.spec.allowlist) or 'nothing'}.")
    return None


def account_refusal(key: KeyRecord, secret: SealedSecret | None, account_ref: str | None) -> Refusal | None:
    """A request naming a vendor account must name the one the key's secret belongs to."""
    if account_ref is None or (secret is not None and secret.account_sid == account_ref):
        return None
    return Refusal(RefusalKind.ACCOUNT_MISMATCH,
                   f"Keybrake vault key {key.key_id} is for {key.spec.vendor} account "
                   f"{secret.account_sid if secret else 'unknown'}, not {account_ref}.")


def cap_refusal(key: KeyRecord, cost_micros: int, *, new_call: bool = True) -> Refusal | None:
    """Whether reserving `cost_micros` more would break a cap. `key` holds the current totals.

    new_call=False: more money for a call already counted (a retry), so max_calls does not apply.
    """
    spec = key.spec
    if new_call and spec.max_calls is not None and key.calls + 1 > spec.max_calls:
        return Refusal(RefusalKind.MAX_CALLS_EXCEEDED,
                       f"Keybrake cap reached for vault key {key.key_id}{_label(key)}: "
                       f"it allows {spec.max_calls} calls and has made {key.calls}.")
    checks = (
        ("total", spec.total_cap_micros, key.spent_micros, key.reserved_micros),
        ("daily", spec.daily_cap_micros, key.today_spent_micros, key.today_reserved_micros),
    )
    for which, cap, spent, reserved in checks:
        if cap is not None and spent + reserved + cost_micros > cap:
            return Refusal(RefusalKind.CAP_EXCEEDED,
                           f"Keybrake cap reached for vault key {key.key_id}{_label(key)}: "
                           f"{which} cap ${format_usd(cap)}, spent ${format_usd(spent)}, "
                           f"reserved ${format_usd(reserved)}, this call ${format_usd(cost_micros)}.")
    return None


def _label(key: KeyRecord) -> str:
    return f" (label {key.spec.label})" if key.spec.label else ""


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
