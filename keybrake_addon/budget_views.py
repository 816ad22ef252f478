"""How budgets are shown, the same way by the CLI and the vault API."""

from .ledger.budgets import BudgetRecord
from .money import format_usd
from .policy import iso

BUDGET_COLUMNS = ["name", "parent", "status", "daily_usd_cap", "total_usd_cap", "spent_usd", "reserved_usd",
                  "today_usd", "remaining_usd", "calls"]


def budget_document(record: BudgetRecord) -> dict:
    remaining = record.remaining_micros
    return {
        "name": record.name, "parent": record.parent,
        "status": "frozen" if record.frozen_by is not None else "active",
        "frozen_by": record.frozen_by,  # the budget whose freeze stops its keys: itself or an ancestor
        "frozen_at": iso(record.frozen_at) if record.frozen_at else None,
        "daily_usd_cap": _usd(record.daily_cap_micros), "total_usd_cap": _usd(record.total_cap_micros),
        "spent_usd": format_usd(record.spent_micros), "reserved_usd": format_usd(record.reserved_micros),
        "today_usd": format_usd(record.today_spent_micros + record.today_reserved_micros),
        "remaining_usd": "unlimited" if remaining is None else format_usd(remaining),
        "calls": record.calls, "children": list(record.children), "created_at": iso(record.created_at),
    }


def _usd(micros: int | None) -> str | None:
    return None if micros is None else format_usd(micros)
