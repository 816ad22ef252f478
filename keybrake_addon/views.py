"""How keys, audit rows and spend totals are shown, the same way by the CLI and the vault API."""

from .ledger.base import KeyRecord
from .ledger.times import utc_now
from .money import format_usd
from .policy import iso


def key_document(record: KeyRecord) -> dict:
    spec = record.spec
    remaining = record.remaining_micros()
    return {
        "key_id": record.key_id, "vendor": spec.vendor, "secret": spec.secret_name, "label": spec.label,
        "status": record.status(utc_now()),
        "daily_usd_cap": _usd_or_none(spec.daily_cap_micros), "total_usd_cap": _usd_or_none(spec.total_cap_micros),
        "max_calls": spec.max_calls, "allowed_endpoints": list(spec.allowlist), "allow_all": spec.allow_all,
        "allow_unpriced": spec.allow_unpriced, "budget": spec.budget, "stripe_account": spec.stripe_account,
        "spent_usd": format_usd(record.spent_micros), "reserved_usd": format_usd(record.reserved_micros),
        "unknown_usd": format_usd(record.unknown_micros),
        "remaining_usd": "unlimited" if remaining is None else format_usd(remaining),
        "calls": record.calls, "created_at": iso(record.created_at),
        "expires_at": iso(spec.expires_at) if spec.expires_at else None,
        "revoked_at": iso(record.revoked_at) if record.revoked_at else None,
        "minted_by": spec.minted_by,
    }


def audit_document(row: dict) -> dict:
    """An audit row with dollar amounts instead of micros."""
    shown = dict(row)
    shown["reserved_usd"] = format_usd(shown.pop("reserved_micros"))
    actual = shown.pop("actual_micros")
    shown["actual_usd"] = None if actual is None else format_usd(actual)
    shown["replayed"] = bool(shown.get("replayed"))
    return shown


def spend_document(row: dict) -> dict:
    shown = dict(row)
    shown["spent_usd"] = format_usd(shown.pop("spent_micros"))
    shown["reserved_usd"] = format_usd(shown.pop("reserved_micros"))
    return shown


def _usd_or_none(micros: int | None) -> str | None:
    return None if micros is None else format_usd(micros)
