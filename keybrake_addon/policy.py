"""The rules a vault key imposes on a call. Pure: the ledger applies them inside its transaction."""

from datetime import datetime

from .ledger.base import KeyRecord, SealedSecret
from .vault.allowlist import is_allowed
from .text import visible
from .vendors.base import Refusal, RefusalKind


def key_refusal(key: KeyRecord, vendor: str, method: str, path: str, now: datetime) -> Refusal | None:
    """Why this key may not make this call at all, before any money is considered.

    `now` is the ledger's clock at decision time, never the request's arrival.
    """
    if key.revoked_at is not None:
        return Refusal(RefusalKind.KEY_REVOKED,
                       f"Keybrake vault key {key.key_id} was revoked at {iso(key.revoked_at)}. "
                       "Ask the parent job for a new key.")
    if key.spec.expires_at is not None and now >= key.spec.expires_at:
        return Refusal(RefusalKind.KEY_EXPIRED,
                       f"Keybrake vault key {key.key_id} expired at {iso(key.spec.expires_at)}. "
                       "Ask the parent job for a new key.")
    if key.spec.vendor != vendor:
        return Refusal(RefusalKind.WRONG_VENDOR,
                       f"Keybrake vault key {key.key_id} is for {key.spec.vendor}, not {vendor}.")
    if not key.spec.allow_all and not is_allowed(key.spec.allowlist, method, path):
        return Refusal(RefusalKind.NOT_ALLOWED,
                       f"Keybrake vault key {key.key_id} does not allow {method} {path}. "
                       f"It allows: {', '.join(key.spec.allowlist) or 'nothing'}.")
    return None


def account_refusal(key: KeyRecord, secret: SealedSecret | None, account_ref: str | None) -> Refusal | None:
    """A request naming a vendor account must name the one the key's secret belongs to."""
    if account_ref is None or (secret is not None and secret.account_sid == account_ref):
        return None
    return Refusal(RefusalKind.ACCOUNT_MISMATCH,
                   f"Keybrake vault key {key.key_id} is for {key.spec.vendor} account "
                   f"{secret.account_sid if secret else 'unknown'}, not {account_ref}.")


def connected_account_refusal(key: KeyRecord, connected: str | None) -> Refusal | None:
    """Stripe Connect: a call acts for the key's connected account, named in Stripe-Account, or for
    no connected account at all. A key bound to one refuses a call without the header: forwarded,
    it would act for the platform account instead, which the key was not issued for."""
    bound = key.spec.stripe_account
    if connected == bound:
        return None
    named = visible(connected[:80]) if connected is not None else None
    if bound is None:
        return Refusal(RefusalKind.ACCOUNT_MISMATCH,
                       f"Keybrake vault key {key.key_id} acts for no connected account, and this request names "
                       f"'{named}' in Stripe-Account. Send it without Stripe-Account, or use a key issued with "
                       f"--stripe-account (API: stripe_account) for that account.")
    if connected is None:
        return Refusal(RefusalKind.ACCOUNT_MISMATCH,
                       f"Keybrake vault key {key.key_id} acts for connected account {bound} only, and this request "
                       f"has no Stripe-Account header (it would act for the platform account). Send "
                       f"Stripe-Account: {bound} (stripe-python: stripe_account=..., stripe-node: stripeAccount).")
    return Refusal(RefusalKind.ACCOUNT_MISMATCH,
                   f"Keybrake vault key {key.key_id} acts for connected account {bound} only, not '{named}' "
                   f"(Stripe-Account).")


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
