"""Budgets in the ledger: their rows, the locks a batch takes on them, and what operators read.

A budget row carries the same counters as a key's: the sum of its keys' and child budgets'.
Decisions (decisions.py) keep them so; this module reads and writes them. A batch locks its
key rows first (in key order), then every budget those keys spend from, with all their
ancestors, in name order: one global order, so two replicas' batches never wait on each other
in a circle.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ..vendors.base import RefusalKind
from . import decisions, retention
from .database import Row, Tx, placeholders
from .decisions import BudgetState, KeyCounters
from .times import from_text, to_text

MAX_DEPTH = 8  # budgets above a key, itself included: deep enough for org / team / project / run
_COLUMNS = ("b.name, b.parent, b.daily_cap_micros, b.total_cap_micros, b.created_at, b.frozen_at, b.spent_micros, "
            "b.reserved_micros, b.calls, b.day, b.day_spent_micros, b.day_reserved_micros")
_CAP_HITS = ", ".join(f"'{kind.code}'" for kind in RefusalKind if kind.is_cap_hit)


class BudgetExists(Exception):
    pass


class UnknownBudget(LookupError):
    pass


class BudgetTooDeep(Exception):
    pass


@dataclass(frozen=True)
class BudgetRecord:
    """A budget as operators see it, from the window of the database's clock."""

    name: str
    parent: str | None
    daily_cap_micros: int | None
    total_cap_micros: int | None
    created_at: datetime
    frozen_at: datetime | None
    frozen_by: str | None  # the budget whose freeze stops this one's keys: itself or an ancestor
    spent_micros: int
    reserved_micros: int
    calls: int
    today_spent_micros: int
    today_reserved_micros: int
    children: tuple[str, ...]
    # What a key in it may still spend: the headroom under the tightest cap of it and its
    # ancestors (another child of an ancestor may have used theirs). None: no cap anywhere.
    remaining_micros: int | None


def budget_state(row: Row) -> BudgetState:
    counters = KeyCounters(row["spent_micros"], row["reserved_micros"], row["calls"], row["day"],
                           row["day_spent_micros"], row["day_reserved_micros"])
    return BudgetState(row["name"], row["parent"], row["daily_cap_micros"], row["total_cap_micros"],
                       from_text(row["frozen_at"]), counters)


def lock_chains(tx: Tx, lock_rows: str, names: Sequence[str]) -> dict[str, BudgetState]:
    """Lock and read the named budgets and all their ancestors, in name order (one statement)."""
    rows = tx.rows(
        "WITH RECURSIVE chain(name) AS ("
        f"SELECT name FROM budgets WHERE name IN {placeholders(names)} "
        "UNION SELECT p.parent FROM budgets p JOIN chain c ON p.name = c.name WHERE p.parent IS NOT NULL) "
        f"SELECT {_COLUMNS} FROM budgets b WHERE b.name IN (SELECT name FROM chain) ORDER BY b.name"
        + (lock_rows and lock_rows + " OF b"), list(names))
    return {row["name"]: budget_state(row) for row in rows}


def chain_of(budgets: dict[str, BudgetState], name: str | None) -> tuple[BudgetState, ...]:
    """A budget and its ancestors, nearest first, from budgets read by lock_chains."""
    found = []
    while name is not None:
        budget = budgets[name]
        found.append(budget)
        name = budget.parent
    return tuple(found)


def write_counters(tx: Tx, budgets: Sequence[BudgetState]) -> None:
    tx.run_many("UPDATE budgets SET spent_micros = ?, reserved_micros = ?, calls = ?, day = ?, day_spent_micros = ?, "
                "day_reserved_micros = ? WHERE name = ?",
                [(b.counters.spent, b.counters.reserved, b.counters.calls, b.counters.day, b.counters.day_spent,
                  b.counters.day_reserved, b.name) for b in budgets])


class BudgetLedger:
    """The budget methods of SqlLedger (which provides `self.database`)."""

    def create_budget(self, name: str, *, parent: str | None, daily_cap_micros: int | None,
                      total_cap_micros: int | None) -> BudgetRecord:
        """Create a budget. Raises BudgetExists, UnknownBudget (the parent) or BudgetTooDeep."""
        with self.database.transaction() as tx:
            now = tx.now()
            if parent is not None:
                lineage = _lineage(tx, parent)
                if not lineage:
                    raise UnknownBudget(parent)
                if len(lineage) >= MAX_DEPTH:
                    raise BudgetTooDeep(f"{parent} is already {len(lineage)} budgets deep; at most {MAX_DEPTH}")
            # ON CONFLICT: two replicas creating one name at once get one budget and one clear refusal.
            created = tx.run("INSERT INTO budgets (name, parent, daily_cap_micros, total_cap_micros, created_at) "
                             "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
                             (name, parent, daily_cap_micros, total_cap_micros, to_text(now)))
            if not created:
                raise BudgetExists(name)
            return _records(tx, now)[name]

    def get_budget(self, name: str) -> BudgetRecord | None:
        with self.database.reading() as tx:
            return _records(tx, tx.now()).get(name)

    def list_budgets(self) -> list[BudgetRecord]:
        with self.database.reading() as tx:
            return list(_records(tx, tx.now()).values())

    def set_budget_frozen(self, name: str, frozen: bool) -> BudgetRecord | None:
        """Freeze (or unfreeze) a budget: the next call of every key under it is refused (or
        decided as before). Freezing twice keeps the first time. None: no such budget."""
        with self.database.transaction() as tx:
            now = tx.now()
            if frozen:
                found = tx.run("UPDATE budgets SET frozen_at = COALESCE(frozen_at, ?) WHERE name = ?",
                               (to_text(now), name))
            else:
                found = tx.run("UPDATE budgets SET frozen_at = NULL WHERE name = ?", (name,))
            if not found:
                return None
            return _records(tx, now)[name]

    def budget_lineage(self, name: str) -> list[str]:
        """The budget and its ancestors, nearest first; empty when there is no such budget."""
        with self.database.reading() as tx:
            return _lineage(tx, name)

    def budget_keys(self, name: str) -> list[str]:
        """The ids of the keys that spend from this budget directly (not through a child)."""
        with self.database.reading() as tx:
            return [r["key_id"] for r in tx.rows("SELECT key_id FROM vault_keys WHERE budget = ? "
                                                 "ORDER BY created_at, key_id", (name,))]

    def spend_by_budget(self, audit_where: tuple[list[str], list], money_where: tuple[list[str], list],
                        rollup_where: tuple[list[str], list]) -> list[dict]:
        """Spend totals per budget, each including its child budgets'. Keys outside every budget
        (and refusals without a key) are the `None` group. The filters name the audit `a`, the
        reservations `r` and their keys `k`, and the days `keybrake audit prune` rolled up `d`
        (their rows are gone, their totals not)."""
        audit_clauses, audit_params = audit_where
        money_clauses, money_params = money_where
        rollup_clauses, rollup_params = rollup_where
        sums = ", ".join(f"CAST(SUM(d.{name}) AS BIGINT) AS {name}" for name in retention.COUNTS)
        with retention.one_snapshot(self.database) as tx:
            calls = tx.rows(
                "SELECT k.budget AS grp, COUNT(*) AS calls, "
                "SUM(CASE WHEN a.decision = 'allowed' THEN 1 ELSE 0 END) AS allowed, "
                "SUM(CASE WHEN a.decision != 'allowed' THEN 1 ELSE 0 END) AS refused, "
                f"SUM(CASE WHEN a.decision IN ({_CAP_HITS}) THEN 1 ELSE 0 END) AS cap_hits "
                "FROM audit a LEFT JOIN vault_keys k ON k.key_id = a.key_id" + _where(audit_clauses)
                + " GROUP BY k.budget", audit_params)
            money = tx.rows(
                "SELECT k.budget AS grp, "
                "CAST(COALESCE(SUM(CASE WHEN r.state = 'settled' THEN r.actual_micros END), 0) AS BIGINT) "
                "AS spent_micros, "
                "CAST(COALESCE(SUM(CASE WHEN r.state IN ('pending', 'unknown') THEN r.reserved_micros END), 0) "
                "AS BIGINT) AS reserved_micros "
                "FROM reservations r JOIN vault_keys k ON k.key_id = r.key_id" + _where(money_clauses)
                + " GROUP BY k.budget", money_params)
            rolled_up = tx.rows(
                f"SELECT k.budget AS grp, {sums} FROM daily_totals d LEFT JOIN vault_keys k ON k.key_id = d.key_id"
                + _where(rollup_clauses) + " GROUP BY k.budget", rollup_params)
            parents = {r["name"]: r["parent"] for r in tx.rows("SELECT name, parent FROM budgets")}
        call_columns, money_columns = ("calls", "allowed", "refused", "cap_hits"), ("spent_micros", "reserved_micros")
        totals: dict = {}
        for rows, columns in ((calls, call_columns), (money, money_columns), (rolled_up, retention.COUNTS)):
            for row in rows:
                # a key's figures count in its budget and in every ancestor's
                for name in _up(parents, row["grp"]) if row["grp"] is not None else [None]:
                    entry = totals.setdefault(name, {"budget": name, **dict.fromkeys(call_columns + money_columns, 0)})
                    for column in columns:
                        entry[column] += int(row[column] or 0)
        return [totals[group] for group in sorted(totals, key=lambda g: (g is None, g or ""))]


def _up(parents: dict[str, str | None], name: str) -> list[str]:
    found = []
    while name is not None and name in parents and len(found) <= MAX_DEPTH:
        found.append(name)
        name = parents[name]
    return found


def _lineage(tx: Tx, name: str) -> list[str]:
    rows = tx.rows("WITH RECURSIVE chain(name, parent, depth) AS ("
                   "SELECT name, parent, 0 FROM budgets WHERE name = ? "
                   "UNION ALL SELECT b.name, b.parent, c.depth + 1 FROM budgets b JOIN chain c ON b.name = c.parent "
                   f"WHERE c.depth < {MAX_DEPTH}) SELECT name FROM chain ORDER BY depth", (name,))
    return [r["name"] for r in rows]


def _records(tx: Tx, now: datetime) -> dict[str, BudgetRecord]:
    """Every budget (a short table), in name order, with who froze it and its children."""
    states = {}
    created = {}
    for row in tx.rows(f"SELECT {_COLUMNS} FROM budgets b ORDER BY b.name"):
        states[row["name"]] = budget_state(row)
        created[row["name"]] = from_text(row["created_at"])
    window = decisions.window_of(now)
    children: dict[str, list[str]] = {}
    for state in states.values():
        if state.parent is not None:
            children.setdefault(state.parent, []).append(state.name)
    records = {}
    for name, state in states.items():
        c = state.counters
        chain = chain_of(states, name)
        frozen_by = next((b.name for b in chain if b.frozen_at is not None), None)
        records[name] = BudgetRecord(
            name, state.parent, state.daily_cap_micros, state.total_cap_micros, created[name], state.frozen_at,
            frozen_by, c.spent, c.reserved, c.calls, c.day_spent if c.day == window else 0,
            c.day_reserved if c.day == window else 0, tuple(children.get(name, ())), chain_headroom(chain, window))
    return records


def chain_headroom(chain: Sequence[BudgetState], window: str) -> int | None:
    """What a key in the first budget of `chain` may still spend under it and its ancestors:
    the headroom under the tightest cap. None when none of them has a cap."""
    limits = [limit for budget in chain for limit in _headroom(budget, window)]
    return max(0, min(limits)) if limits else None


def _headroom(budget: BudgetState, window: str) -> list[int]:
    c = budget.counters
    today = c.day_spent + c.day_reserved if c.day == window else 0
    limits = []
    if budget.total_cap_micros is not None:
        limits.append(budget.total_cap_micros - c.spent - c.reserved)
    if budget.daily_cap_micros is not None:
        limits.append(budget.daily_cap_micros - today)
    return limits


def _where(clauses: list[str]) -> str:
    return " WHERE " + " AND ".join(clauses) if clauses else ""
