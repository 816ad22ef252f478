"""Creating budgets: check the request, then let the ledger create it in one transaction.

A budget caps what every key issued into it spends together, and its parent's cap what all
its children spend together. The names go into headers (`x-keybrake-cap: budget:NAME`), URLs
(/vault/budgets/NAME) and terminals, so they are short and plain.
"""

import re
from dataclasses import dataclass

from ..ledger.budgets import BudgetExists, BudgetRecord, BudgetTooDeep, UnknownBudget

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"


class BudgetError(ValueError):
    """The budget request is not acceptable; `field` names what to change."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


@dataclass(frozen=True)
class BudgetRequest:
    name: str
    parent: str | None = None
    daily_cap_micros: int | None = None
    total_cap_micros: int | None = None


def check_name(name: str, field: str = "name") -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise BudgetError(field, f"a budget name is {NAME_RULE}")
    return name


def create_budget(ledger, request: BudgetRequest) -> BudgetRecord:
    check_name(request.name)
    if request.parent is not None:
        check_name(request.parent, "parent")
    for field, value in (("daily_usd_cap", request.daily_cap_micros), ("total_usd_cap", request.total_cap_micros)):
        if value is not None and value < 0:
            raise BudgetError(field, "must not be negative")
    try:
        return ledger.create_budget(request.name, parent=request.parent, daily_cap_micros=request.daily_cap_micros,
                                    total_cap_micros=request.total_cap_micros)
    except BudgetExists:
        raise BudgetError("name", f"a budget named {request.name!r} already exists") from None
    except UnknownBudget:
        raise BudgetError("parent", f"no budget named {request.parent!r}; create it first "
                                    f"(`keybrake budget create {request.parent}`)") from None
    except BudgetTooDeep as failure:
        raise BudgetError("parent", f"budgets nest at most this deep: {failure}") from None


def budget_caps(ledger, name: str) -> list[BudgetRecord] | None:
    """The budget and its ancestors, nearest first; None when there is no such budget."""
    records = {record.name: record for record in ledger.list_budgets()}
    if name not in records:
        return None
    lineage, current = [], name
    while current is not None:
        lineage.append(records[current])
        current = records[current].parent
    return lineage
