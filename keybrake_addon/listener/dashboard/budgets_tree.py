"""Budgets as the tree the Budgets page draws: each budget under its parent, children in name order.

The ledger gives every budget with its parent and its counters (each already includes its
children's); this only orders them depth first and says how deep each one sits.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from ...ledger.budgets import BudgetRecord
from ...ledger.dashboard_reads import BudgetKeys

NO_KEYS = BudgetKeys(0, 0)


@dataclass(frozen=True)
class BudgetRow:
    budget: BudgetRecord
    depth: int  # 0 for a budget without a parent
    keys: BudgetKeys  # the keys that spend from it directly

    @property
    def frozen_here(self) -> bool:
        return self.budget.frozen_at is not None

    @property
    def frozen_above(self) -> str | None:
        """The ancestor whose freeze stops this budget's keys, when it is not frozen itself."""
        frozen_by = self.budget.frozen_by
        return frozen_by if frozen_by is not None and frozen_by != self.budget.name else None


def budget_rows(budgets: Iterable[BudgetRecord], keys: dict[str, BudgetKeys]) -> list[BudgetRow]:
    by_name = {b.name: b for b in budgets}
    children: dict[str | None, list[str]] = {}
    for budget in by_name.values():
        # A parent the list lacks (never, with one transaction's read) would hide a subtree: show it at the top.
        parent = budget.parent if budget.parent in by_name else None
        children.setdefault(parent, []).append(budget.name)
    rows: list[BudgetRow] = []
    stack = [(name, 0) for name in sorted(children.get(None, []), reverse=True)]
    while stack:
        name, depth = stack.pop()
        rows.append(BudgetRow(by_name[name], depth, keys.get(name, NO_KEYS)))
        stack.extend((child, depth + 1) for child in sorted(children.get(name, []), reverse=True))
    return rows
