"""Budgets in the ledger, on both backends: caps shared by many keys, nested, frozen, by day.

Every admit checks the key's caps and every ancestor budget's in the same transaction, so a
budget's cap holds however many keys and replicas race for it.
"""

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from keybrake_addon.ledger import corrections
from keybrake_addon.ledger.base import AdmitRequest, AuditFilter, CallFacts, Resolution, SettleRequest
from keybrake_addon.ledger.budgets import BudgetExists, BudgetTooDeep, UnknownBudget
from keybrake_addon.ledger.executor import AsyncLedger
from keybrake_addon.ledger.sqlite import SqliteLedger
from keybrake_addon.vendors.base import CostEstimate, RefusalKind

from .conftest import USD, admit, settle, spec

CALL = CallFacts("stripe", "POST", "/v1/payment_intents", None, None)


def key_hash(n: int) -> str:
    return f"{n:064d}"


def add_key(ledger, n: int, budget: str | None, **caps) -> str:
    key_id = f"kbk_{n:03d}"
    ledger.create_key(key_id, key_hash(n), replace(spec(**caps), budget=budget))
    return key_id


def budget_money(ledger, name: str) -> tuple[float, float]:
    found = ledger.get_budget(name)
    return found.spent_micros / USD, found.reserved_micros / USD


@pytest.fixture
def ledger(open_ledger):
    made = open_ledger()
    made.put_secret("stripe", "default", b"n" * 12, b"sealed", "fp", None)
    return made


def replica(open_ledger, first, clock) -> AsyncLedger:
    """The gate's ledger on one more connection: on SQLite with its never-waiting on-loop
    connection too, as Installation.async_ledger builds it."""
    inline = None
    if isinstance(first, SqliteLedger):
        inline = SqliteLedger(first.database.path, busy_timeout_s=0, clock=clock)
    return AsyncLedger(open_ledger(), inline=inline)


def test_ten_keys_of_one_300_dollar_budget_hammered_in_parallel_pass_exactly_six_calls(ledger, open_ledger, clock):
    ledger.create_budget("agents", parent=None, daily_cap_micros=None, total_cap_micros=300 * USD)
    keys = [add_key(ledger, n, "agents", total=1000 * USD) for n in range(10)]

    async def hammer():
        replicas = [replica(open_ledger, ledger, clock) for _ in range(2)]
        try:
            # Each replica serves its own keys, so only the budget's row stands between them.
            calls = [replicas[n % 2].admit(AdmitRequest(key_hash(n), CALL, CostEstimate(50 * USD)))
                     for _ in range(50) for n in range(10)]
            admissions = await asyncio.gather(*calls)
            for admission in admissions:
                if admission.allowed:
                    replicas[0].settle(SettleRequest(admission.audit_id, admission.reservation_id, Resolution.SETTLE,
                                                     None, 200, (), None, None, None, False, 1.0))
            assert (await replicas[0].drain(10)).left == 0
            return admissions
        finally:
            for one in replicas:
                one.close()

    admissions = asyncio.run(hammer())
    assert sum(a.allowed for a in admissions) == 6
    refused = [a.refusal for a in admissions if not a.allowed]
    assert len(refused) == 494
    assert {(r.kind, r.cap) for r in refused} == {(RefusalKind.CAP_EXCEEDED, "budget:agents")}
    assert budget_money(ledger, "agents") == (300, 0)
    assert ledger.get_budget("agents").calls == 6
    assert sum(ledger.get_key(k).spent_micros for k in keys) == 300 * USD


def test_nested_budgets_the_childs_cap_and_the_parents_cap_both_bind(ledger):
    ledger.create_budget("org", parent=None, daily_cap_micros=None, total_cap_micros=500 * USD)
    ledger.create_budget("team-a", parent="org", daily_cap_micros=None, total_cap_micros=200 * USD)
    ledger.create_budget("team-b", parent="org", daily_cap_micros=None, total_cap_micros=None)
    add_key(ledger, 1, "team-a")
    add_key(ledger, 2, "team-b")
    add_key(ledger, 3, None, total=1000 * USD)  # outside every budget: unaffected

    a = [admit(ledger, 50, key_hash=key_hash(1)) for _ in range(5)]
    assert [x.allowed for x in a] == [True] * 4 + [False]
    assert a[-1].refusal.cap == "budget:team-a" and "budget team-a" in a[-1].refusal.message
    b = [admit(ledger, 50, key_hash=key_hash(2)) for _ in range(7)]
    assert [x.allowed for x in b] == [True] * 6 + [False]  # org's $500 less team-a's $200
    assert b[-1].refusal.cap == "budget:org"
    assert admit(ledger, 900, key_hash=key_hash(3)).allowed

    settle(ledger, a[0], Resolution.SETTLE, 30)  # a charge cheaper than its hold
    settle(ledger, b[0], Resolution.RELEASE)  # a decline: the hold comes back to both budgets
    assert budget_money(ledger, "team-a") == (30, 150)
    assert budget_money(ledger, "team-b") == (0, 250)
    assert budget_money(ledger, "org") == (30, 400)
    assert ledger.get_budget("org").children == ("team-a", "team-b")
    # what a key may still spend: team-a's own $20, team-b (no cap of its own) org's $70
    assert (ledger.get_budget("team-a").remaining_micros, ledger.get_budget("team-b").remaining_micros) == (
        20 * USD, 70 * USD)
    assert admit(ledger, 70, key_hash=key_hash(2)).allowed  # the freed $70 under org
    assert not admit(ledger, 1, key_hash=key_hash(2)).allowed

    spend = {row["budget"]: row for row in ledger.spend("budget", AuditFilter())}
    assert set(spend) == {"org", "team-a", "team-b", None}
    assert (spend["org"]["spent_micros"], spend["org"]["reserved_micros"]) == (30 * USD, 470 * USD)
    assert spend["org"]["calls"] == spend["team-a"]["calls"] + spend["team-b"]["calls"] == 14
    assert (spend["team-a"]["cap_hits"], spend["team-b"]["cap_hits"], spend["org"]["cap_hits"]) == (1, 2, 3)
    assert spend[None]["reserved_micros"] == 900 * USD


def test_budgets_refuse_what_cannot_be_right(ledger):
    ledger.create_budget("org", parent=None, daily_cap_micros=None, total_cap_micros=None)
    with pytest.raises(BudgetExists):
        ledger.create_budget("org", parent=None, daily_cap_micros=None, total_cap_micros=None)
    with pytest.raises(UnknownBudget):
        ledger.create_budget("team", parent="nobody", daily_cap_micros=None, total_cap_micros=None)
    parent = "org"
    for depth in range(2, 9):
        ledger.create_budget(f"level{depth}", parent=parent, daily_cap_micros=None, total_cap_micros=None)
        parent = f"level{depth}"
    with pytest.raises(BudgetTooDeep):
        ledger.create_budget("level9", parent=parent, daily_cap_micros=None, total_cap_micros=None)
    assert ledger.budget_lineage("level3") == ["level3", "level2", "org"]
    assert ledger.budget_lineage("nobody") == []


def test_freezing_a_budget_refuses_every_key_under_it_on_the_next_call(ledger, open_ledger):
    ledger.create_budget("org", parent=None, daily_cap_micros=None, total_cap_micros=None)
    ledger.create_budget("team", parent="org", daily_cap_micros=None, total_cap_micros=None)
    add_key(ledger, 1, "team", total=100 * USD)
    add_key(ledger, 2, "org", total=100 * USD)
    other_replica = open_ledger()
    held = admit(other_replica, 10, key_hash=key_hash(1))
    assert held.allowed

    frozen = ledger.set_budget_frozen("org", True)
    assert frozen.frozen_by == "org" and frozen.frozen_at is not None
    assert ledger.get_budget("team").frozen_by == "org" and ledger.get_budget("team").frozen_at is None
    for n in (1, 2):
        refused = admit(other_replica, 1, key_hash=key_hash(n))
        assert refused.refusal.kind is RefusalKind.BUDGET_FROZEN
        assert "budget org was frozen" in refused.refusal.message
    # the call already in flight still settles: its money moved
    settle(other_replica, held, Resolution.SETTLE, 10)
    assert budget_money(ledger, "org") == (10, 0)

    assert ledger.set_budget_frozen("org", False).frozen_by is None
    assert admit(other_replica, 1, key_hash=key_hash(1)).allowed
    assert ledger.set_budget_frozen("nobody", True) is None


def test_a_budgets_daily_cap_starts_again_at_midnight_by_the_databases_clock(ledger, clock):
    ledger.create_budget("daily", parent=None, daily_cap_micros=100 * USD, total_cap_micros=None)
    add_key(ledger, 1, "daily")
    add_key(ledger, 2, "daily")
    clock.set(datetime(2026, 11, 28, 23, 59, 59, tzinfo=UTC))
    before_midnight = admit(ledger, 100, key_hash=key_hash(1))
    assert before_midnight.allowed
    refused = admit(ledger, 1, key_hash=key_hash(2))
    assert refused.refusal.cap == "budget:daily" and "daily cap $100.00" in refused.refusal.message

    clock.advance(seconds=2)  # 00:00:01 UTC: a new window, yesterday's hold still open
    after_midnight = admit(ledger, 100, key_hash=key_hash(2))
    assert after_midnight.allowed
    assert not admit(ledger, 1, key_hash=key_hash(1)).allowed
    settle(ledger, before_midnight, Resolution.SETTLE, 100)  # yesterday's money: not today's
    today = ledger.get_budget("daily")
    assert (today.today_spent_micros, today.today_reserved_micros) == (0, 100 * USD)
    assert (today.spent_micros, today.reserved_micros) == (100 * USD, 100 * USD)


def test_a_retry_top_up_is_checked_against_the_budget(ledger):
    ledger.create_budget("small", parent=None, daily_cap_micros=None, total_cap_micros=100 * USD)
    add_key(ledger, 1, "small", total=1000 * USD)
    add_key(ledger, 2, "small", total=1000 * USD)
    first = admit(ledger, 50, idem="retry-me", key_hash=key_hash(1))  # its answer never came
    assert admit(ledger, 40, key_hash=key_hash(2)).allowed
    refused = admit(ledger, 70, idem="retry-me", key_hash=key_hash(1))  # +$20 would make $110
    assert refused.refusal.cap == "budget:small"
    retried = admit(ledger, 60, idem="retry-me", key_hash=key_hash(1))  # +$10: exactly $100
    assert retried.allowed and retried.reservation_id == first.reservation_id
    assert retried.reserved_micros == 10 * USD
    assert budget_money(ledger, "small") == (0, 100)


def test_a_correction_by_hand_moves_the_budgets_too(ledger):
    ledger.create_budget("org", parent=None, daily_cap_micros=None, total_cap_micros=None)
    ledger.create_budget("team", parent="org", daily_cap_micros=None, total_cap_micros=None)
    add_key(ledger, 1, "team")
    held = admit(ledger, 50, key_hash=key_hash(1))
    corrections.resolve_by_hand(ledger, held.reservation_id, 30 * USD)
    assert budget_money(ledger, "team") == budget_money(ledger, "org") == (30, 0)


def test_a_batch_of_keys_without_a_budget_asks_nothing_about_budgets(tmp_path):
    ledger = SqliteLedger(tmp_path / "l.db")
    ledger.put_secret("stripe", "default", b"n" * 12, b"sealed", "fp", None)
    ledger.create_budget("team", parent=None, daily_cap_micros=None, total_cap_micros=None)
    add_key(ledger, 1, None, total=100 * USD)
    add_key(ledger, 2, "team", total=100 * USD)
    statements: list[str] = []
    ledger.database._db.set_trace_callback(statements.append)
    try:
        settle(ledger, admit(ledger, 1, key_hash=key_hash(1)), Resolution.SETTLE)
        assert statements and not [s for s in statements if "budgets" in s]
        admit(ledger, 1, key_hash=key_hash(2))
        assert len([s for s in statements if "budgets" in s]) == 2  # one read with the locks, one write
    finally:
        ledger.database._db.set_trace_callback(None)
        ledger.close()
