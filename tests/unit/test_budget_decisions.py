"""Budgets in the money rules (keybrake_addon/ledger/decisions.py): table tests, then a property.

A key may spend from a budget, and a budget from its parent. Every admit checks the key's caps
and each budget's; every plan moves the same amounts on the key and its budgets. The property
test plays a store holding a tree of budgets and several keys, writing every plan as a store
does, and checks after each step that no budget is over a cap and that each budget's counters
are the sum of its keys' and child budgets'.
"""

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from keybrake_addon.ledger import decisions
from keybrake_addon.ledger.base import AdmitRequest, CallFacts, KeySpec, Resolution, SealedSecret, SettleRequest
from keybrake_addon.ledger.decisions import AdmitView, BudgetState, KeyCounters, KeyState, ReservationState
from keybrake_addon.vendors.base import CostEstimate, RefusalKind

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
TODAY, YESTERDAY = "2025-03-10", "2025-03-09"
ENDPOINT = "POST /v1/payment_intents"
SECRET = SealedSecret("stripe", "main", b"n" * 12, b"c" * 32, None, None)


def key_state(key_id: str = "kb_1", counters: KeyCounters = KeyCounters(day=TODAY), *, budget: str | None = "team",
              total: int | None = None, daily: int | None = None, max_calls: int | None = None) -> KeyState:
    spec = KeySpec(vendor="stripe", secret_name="main", label=None, daily_cap_micros=daily, total_cap_micros=total,
                   max_calls=max_calls, allowlist=(ENDPOINT,), allow_all=False, allow_unpriced=False,
                   expires_at=None, budget=budget)
    return KeyState(key_id, spec, NOW - timedelta(days=3), None, counters)


def budget(name: str, parent: str | None = None, *, total: int | None = None, daily: int | None = None,
           counters: KeyCounters = KeyCounters(day=TODAY), frozen_at: datetime | None = None) -> BudgetState:
    return BudgetState(name, parent, daily, total, frozen_at, counters)


def request(cost: int, *, idempotency_key: str | None = None, at: datetime = NOW) -> AdmitRequest:
    method, path = ENDPOINT.split(" ")
    return AdmitRequest("hash", CallFacts("stripe", method, path, idempotency_key, at), CostEstimate(cost))


def admit(key: KeyState, budgets: tuple[BudgetState, ...], cost: int, *, existing: ReservationState | None = None,
          now: datetime = NOW, idempotency_key: str | None = None) -> decisions.AdmitPlan:
    return decisions.admit(AdmitView(key, SECRET, existing, None, budgets),
                           request(cost, idempotency_key=idempotency_key, at=now), now)


def settle_request(resolution: Resolution, actual: int | None = None) -> SettleRequest:
    return SettleRequest(1, 7, resolution, actual, None, (), None, None, None, False, 1.0)


def counters_of(plan) -> dict[str, KeyCounters]:
    return {b.name: b.counters for b in plan.budgets}


# --- admits ----------------------------------------------------------------------------------------

def test_an_admit_holds_the_same_amount_on_the_key_and_every_budget():
    chain = (budget("team", "org", total=1000, counters=KeyCounters(100, 50, 2, TODAY, 30, 50)),
             budget("org", total=5000, counters=KeyCounters(900, 80, 9, TODAY, 90, 80)))
    plan = admit(key_state(), chain, 300)
    assert plan.refusal is None
    assert plan.counters == KeyCounters(0, 300, 1, TODAY, 0, 300)
    assert counters_of(plan) == {"team": KeyCounters(100, 350, 3, TODAY, 30, 350),
                                 "org": KeyCounters(900, 380, 10, TODAY, 90, 380)}


def test_a_key_without_a_budget_plans_no_budget_writes():
    plan = admit(key_state(budget=None), (), 300)
    assert plan.refusal is None and plan.budgets == ()


def test_the_budgets_total_cap_binds_when_the_key_has_room():
    chain = (budget("team", "org", total=1000, counters=KeyCounters(600, 300, 3, TODAY, 0, 300)),
             budget("org", total=10_000))
    assert admit(key_state(total=5000), chain, 100).refusal is None  # exactly at the cap: allowed
    plan = admit(key_state(total=5000), chain, 101)
    assert plan.refusal.kind is RefusalKind.CAP_EXCEEDED and plan.refusal.cap == "budget:team"
    assert "budget team" in plan.refusal.message and "total cap $0.001" in plan.refusal.message
    assert plan.counters is None and plan.budgets == ()


def test_the_parents_cap_binds_when_the_child_has_room():
    chain = (budget("team", "org", total=10_000),
             budget("org", daily=1000, counters=KeyCounters(5000, 0, 9, TODAY, 900, 0)))
    plan = admit(key_state(), chain, 101)
    assert plan.refusal.cap == "budget:org" and "daily cap" in plan.refusal.message


def test_the_keys_own_cap_is_checked_first_and_named_key():
    chain = (budget("team", total=0),)
    plan = admit(key_state(total=50), chain, 100)
    assert plan.refusal.kind is RefusalKind.CAP_EXCEEDED and plan.refusal.cap == "key"
    calls = admit(key_state(max_calls=0), chain, 0)
    assert calls.refusal.kind is RefusalKind.MAX_CALLS_EXCEEDED and calls.refusal.cap == "key"


def test_a_frozen_ancestor_refuses_every_call_like_a_revoked_key():
    chain = (budget("team", "org"), budget("org", frozen_at=NOW - timedelta(minutes=5)))
    plan = admit(key_state(), chain, 0)
    assert plan.refusal.kind is RefusalKind.BUDGET_FROZEN and plan.refusal.kind.status == 401
    assert "budget org was frozen at 2025-03-10T11:55:00Z" in plan.refusal.message
    assert "keybrake budget unfreeze org" in plan.refusal.message
    # a retry of a call already settled is refused too: the budget stops everything
    settled = ReservationState(7, "kb_1", ENDPOINT, NOW - timedelta(minutes=1), "settled", TODAY, 100, 0, 0, 100)
    assert admit(key_state(), chain, 100, existing=settled, idempotency_key="i").refusal.kind is RefusalKind.BUDGET_FROZEN


def test_a_budgets_daily_counters_start_again_on_a_new_utc_day():
    full_yesterday = KeyCounters(500, 0, 5, YESTERDAY, 500, 0)
    chain = (budget("team", daily=500, counters=full_yesterday),)
    key = key_state(counters=KeyCounters())
    assert admit(key, chain, 1, now=NOW - timedelta(days=1)).refusal.cap == "budget:team"
    plan = admit(key, chain, 500)
    assert plan.refusal is None
    assert counters_of(plan)["team"] == KeyCounters(500, 500, 6, TODAY, 0, 500)


def test_a_budget_ahead_of_the_clock_moves_the_decision_into_its_window():
    # Another replica already decided after midnight for a sibling key; this clock is a second behind.
    after_midnight = KeyCounters(0, 400, 1, "2025-03-11", 0, 400)
    chain = (budget("team", daily=500, counters=after_midnight),)
    late_clock = datetime(2025, 3, 10, 23, 59, 59, tzinfo=UTC)
    assert admit(key_state(), chain, 101, now=late_clock).refusal.cap == "budget:team"
    plan = admit(key_state(), chain, 100, now=late_clock)
    assert plan.new_reservation.day == "2025-03-11"  # one window for the key and its budgets
    assert plan.counters.day == "2025-03-11" and counters_of(plan)["team"].day_reserved == 500


def test_a_retry_top_up_is_checked_against_the_budgets():
    pending = ReservationState(7, "kb_1", ENDPOINT, NOW - timedelta(minutes=1), "pending", TODAY, 400, 1, 0)
    key = key_state(counters=KeyCounters(0, 400, 1, TODAY, 0, 400))
    chain = (budget("team", total=500, counters=KeyCounters(0, 400, 1, TODAY, 0, 400)),)
    refused = admit(key, chain, 600, existing=pending, idempotency_key="i")  # needs 200 more, 100 left
    assert refused.refusal.cap == "budget:team" and "this call $0.0002" in refused.refusal.message
    plan = admit(key, chain, 500, existing=pending, idempotency_key="i")
    assert plan.refusal is None and plan.reserved_micros == 100
    assert counters_of(plan)["team"] == KeyCounters(0, 500, 1, TODAY, 0, 500)  # a retry is not a new call


def test_a_retry_from_yesterday_moves_its_hold_into_todays_window_on_the_budgets_too():
    pending = ReservationState(7, "kb_1", ENDPOINT, NOW - timedelta(hours=13), "unknown", YESTERDAY, 400, 1, 0)
    key = key_state(counters=KeyCounters(0, 400, 1, YESTERDAY, 0, 400))
    chain = (budget("team", daily=1000, counters=KeyCounters(0, 400, 1, YESTERDAY, 0, 400)),)
    plan = admit(key, chain, 400, existing=pending, idempotency_key="i")
    assert plan.refusal is None
    assert plan.counters == KeyCounters(0, 400, 1, TODAY, 0, 400)
    assert counters_of(plan)["team"] == KeyCounters(0, 400, 1, TODAY, 0, 400)
    assert plan.change.day == TODAY


def test_a_released_hold_reopened_by_a_retry_is_checked_against_the_budgets():
    released = ReservationState(7, "kb_1", ENDPOINT, NOW - timedelta(minutes=1), "released", TODAY, 400, 0, 1)
    chain = (budget("team", total=300),)
    assert admit(key_state(), chain, 400, existing=released, idempotency_key="i").refusal.cap == "budget:team"
    plan = admit(key_state(), chain, 300, existing=released, idempotency_key="i")
    assert plan.refusal is None and counters_of(plan)["team"].reserved == 300


# --- settling and corrections ----------------------------------------------------------------------

def test_a_settlement_moves_the_same_amounts_on_the_budgets():
    pending = ReservationState(7, "kb_1", ENDPOINT, NOW, "pending", TODAY, 400, 1, 0)
    key = KeyCounters(0, 400, 1, TODAY, 0, 400)
    chain = (budget("team", "org", counters=KeyCounters(50, 400, 2, TODAY, 50, 400)),
             budget("org", counters=KeyCounters(50, 400, 2, YESTERDAY, 50, 400)))  # org: a window that is over
    plan = decisions.settle(pending, key, settle_request(Resolution.SETTLE, 350), chain)
    assert plan.counters == KeyCounters(350, 0, 1, TODAY, 350, 0)
    assert counters_of(plan) == {"team": KeyCounters(400, 0, 2, TODAY, 400, 0),
                                 "org": KeyCounters(400, 0, 2, YESTERDAY, 50, 400)}
    released = decisions.settle(pending, key, settle_request(Resolution.RELEASE), chain)
    assert counters_of(released)["team"] == KeyCounters(50, 0, 2, TODAY, 50, 0)
    unknown = decisions.settle(pending, key, settle_request(Resolution.UNKNOWN), chain)
    assert unknown.counters is None and unknown.budgets == ()


def test_a_correction_moves_the_budgets_as_it_moves_the_key():
    settled = ReservationState(7, "kb_1", ENDPOINT, NOW, "settled", TODAY, 400, 0, 0, 400)
    before = KeyCounters(400, 0, 1, TODAY, 400, 0)
    after = decisions.correct_price(settled, before, 430)
    chain = decisions.follow((budget("team", counters=KeyCounters(900, 0, 3, TODAY, 900, 0)),), settled.day,
                             before, after)
    assert chain[0].counters == KeyCounters(930, 0, 3, TODAY, 930, 0)


# --- the property: a tree of budgets under random interleavings --------------------------------------

START = datetime(2025, 3, 10, 23, 58, tzinfo=UTC)  # two minutes before midnight
# org <- (team_a <- (key a1, key a2), team_b <- key b1), and key o1 straight in org
PARENTS = {"org": None, "team_a": "org", "team_b": "org"}
KEY_BUDGETS = {"a1": "team_a", "a2": "team_a", "b1": "team_b", "o1": "org"}
KEY_CAPS = {"a1": dict(total=700), "a2": {}, "b1": dict(daily=500), "o1": {}}


@dataclass
class Attempt:
    reservation_id: int
    opened: bool


@dataclass
class TreeStore:
    """Keys and budgets' rows, written exactly as a store writes the plans."""

    keys: dict[str, KeyState]
    budgets: dict[str, BudgetState]
    now: datetime = START
    reservations: dict[int, ReservationState] = field(default_factory=dict)
    by_idempotency_key: dict[tuple[str, str], int] = field(default_factory=dict)
    in_flight: list[Attempt] = field(default_factory=list)
    refused_by_vendor: set[int] = field(default_factory=set)

    def chain(self, key_id: str) -> tuple[BudgetState, ...]:
        found, name = [], self.keys[key_id].spec.budget
        while name is not None:
            found.append(self.budgets[name])
            name = self.budgets[name].parent
        return tuple(found)

    def write_budgets(self, budgets: tuple[BudgetState, ...]) -> None:
        for b in budgets:
            self.budgets[b.name] = b

    def admit(self, key_pick: int, cost: int, idempotency_key: str | None) -> None:
        key_id = sorted(self.keys)[key_pick % len(self.keys)]
        existing = self.reservations.get(self.by_idempotency_key.get((key_id, idempotency_key)))
        state = self.keys[key_id]
        plan = decisions.admit(AdmitView(state, SECRET, existing, None, self.chain(key_id)),
                               request(cost, idempotency_key=idempotency_key, at=self.now), self.now)
        if plan.refusal is not None:
            assert plan.counters is None and plan.budgets == () and plan.change is None
            return
        if plan.counters is not None:
            self.keys[key_id] = replace(state, counters=plan.counters)
        self.write_budgets(plan.budgets)
        if plan.new_reservation is not None:
            new = plan.new_reservation
            reservation_id = len(self.reservations) + 1
            self.reservations[reservation_id] = ReservationState(reservation_id, key_id, new.endpoint, self.now,
                                                                 "pending", new.day, new.reserved, 1, 0)
            if new.idempotency_key is not None:
                self.by_idempotency_key[(key_id, new.idempotency_key)] = reservation_id
        else:
            reservation_id = plan.reservation_id
            if (change := plan.change) is not None:
                current = self.reservations[change.id]
                self.reservations[change.id] = replace(
                    current, state=change.state, day=change.day, reserved=change.reserved,
                    attempts_open=change.attempts_open, released_attempts=change.released_attempts,
                    actual=None if change.reopened else current.actual)
        self.in_flight.append(Attempt(reservation_id, plan.opened))

    def answer(self, pick: int, resolution: Resolution, fraction: float | None) -> None:
        if not self.in_flight:
            return
        attempt = self.in_flight.pop(pick % len(self.in_flight))
        reservation = self.reservations[attempt.reservation_id]
        resolution, replayed = self._as_the_gate_would_answer(attempt, resolution)
        actual = None if fraction is None else int(reservation.reserved * fraction)
        key = self.keys[reservation.key_id]
        request_ = replace(settle_request(resolution, actual), replayed=replayed)
        plan = decisions.settle(reservation, key.counters, request_, self.chain(reservation.key_id))
        if plan.counters is not None:
            self.keys[reservation.key_id] = replace(key, counters=plan.counters)
        self.write_budgets(plan.budgets)
        if resolution is Resolution.RELEASE and replayed:
            self.refused_by_vendor.add(reservation.id)
        self.reservations[reservation.id] = replace(
            reservation, state=plan.state, attempts_open=plan.attempts_open,
            released_attempts=plan.released_attempts, actual=plan.actual)

    def _as_the_gate_would_answer(self, attempt: Attempt, resolution: Resolution) -> tuple[Resolution, bool]:
        """Only answers a vendor that keeps its word gives (see test_decisions.ModelStore)."""
        if attempt.reservation_id in self.refused_by_vendor:
            if resolution is Resolution.LEAVE and not attempt.opened:
                return Resolution.LEAVE, False
            return Resolution.RELEASE, True
        if resolution is Resolution.LEAVE and attempt.opened:
            return Resolution.RELEASE, False
        if resolution is Resolution.RELEASE and not attempt.opened:
            return Resolution.LEAVE, False
        return resolution, False

    def clock(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)


def subtree_keys(store: TreeStore, name: str) -> set[str]:
    names = {name}
    while True:
        more = {b for b, parent in PARENTS.items() if parent in names} - names
        if not more:
            break
        names |= more
    return {k for k, b in KEY_BUDGETS.items() if b in names}


def check_tree(store: TreeStore) -> None:
    for name, b in store.budgets.items():
        c = b.counters
        # never over a cap
        if b.total_cap_micros is not None:
            assert c.spent + c.reserved <= b.total_cap_micros, name
        if b.daily_cap_micros is not None:
            assert c.day_spent + c.day_reserved <= b.daily_cap_micros, name
        # the sum of its keys and child budgets
        keys = [store.keys[k].counters for k in KEY_BUDGETS if KEY_BUDGETS[k] == name]
        children = [store.budgets[child].counters for child, parent in PARENTS.items() if parent == name]
        for column in ("spent", "reserved", "calls"):
            assert getattr(c, column) == sum(getattr(x, column) for x in keys + children), (name, column)
        # and its daily counters are the holds and spend of its window under it
        under = [r for r in store.reservations.values() if r.key_id in subtree_keys(store, name) and r.day == c.day]
        assert c.day_reserved == sum(r.reserved for r in under if r.state in decisions.OPEN_STATES), name
        assert c.day_spent == sum(r.actual for r in under if r.state == "settled"), name
    for key_id, key in store.keys.items():
        c, spec = key.counters, key.spec
        if spec.total_cap_micros is not None:
            assert c.spent + c.reserved <= spec.total_cap_micros
        if spec.daily_cap_micros is not None:
            assert c.day_spent + c.day_reserved <= spec.daily_cap_micros


def new_tree(caps: tuple) -> TreeStore:
    org_caps, team_a_caps, team_b_caps = caps
    budgets = {name: BudgetState(name, parent, daily, total, None, KeyCounters())
               for (name, parent), (total, daily) in zip(PARENTS.items(), (org_caps, team_a_caps, team_b_caps))}
    keys = {k: key_state(k, KeyCounters(), budget=b, **KEY_CAPS[k]) for k, b in KEY_BUDGETS.items()}
    return TreeStore(keys, budgets)


amounts = st.one_of(st.sampled_from([0, 100, 250, 400]), st.integers(0, 400))
admits = st.tuples(st.just("admit"), st.integers(0, 3), amounts, st.sampled_from([None, "a", "a", "b"]))
answers = st.tuples(st.just("answer"), st.integers(0, 5),
                    st.sampled_from([Resolution.SETTLE, Resolution.RELEASE, Resolution.UNKNOWN, Resolution.LEAVE]),
                    st.one_of(st.none(), st.floats(0, 1)))
clock_steps = st.tuples(st.just("clock"), st.one_of(st.sampled_from([1, 60, 3600, 23 * 3600, 25 * 3600]),
                                                     st.integers(-120, -1), st.just(-3600)))
tree_caps = st.sampled_from([
    ((1500, None), (800, None), (None, 600)),  # (total, daily) for org, team_a, team_b
    ((None, 900), (1000, 500), (600, None)),
    ((1000, 1000), (None, None), (None, None)),
    ((None, None), (500, 400), (400, 300)),
])

# A hold from before midnight topped up by a retry after it, while a sibling filled today's window.
RETRY_AFTER_MIDNIGHT = [("admit", 0, 400, "a"), ("clock", 3600), ("admit", 1, 400, None), ("admit", 0, 450, "a")]
# A sibling key moved the budgets past midnight; this replica's clock is still before it.
CLOCK_BEHIND_A_SIBLING = [("clock", 3600), ("admit", 1, 100, None), ("clock", -3600), ("admit", 0, 100, None),
                          ("clock", 3600), ("answer", 1, Resolution.SETTLE, None)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(caps=((None, 900), (1000, 500), (600, None)), operations=RETRY_AFTER_MIDNIGHT)
@example(caps=((None, 900), (1000, 500), (600, None)), operations=CLOCK_BEHIND_A_SIBLING)
@given(caps=tree_caps, operations=st.lists(st.one_of(admits, admits, answers, answers, clock_steps), max_size=50))
def test_no_budget_is_over_a_cap_and_each_is_the_sum_of_what_is_under_it(caps, operations):
    store = new_tree(caps)
    for operation in operations:
        getattr(store, operation[0])(*operation[1:])
        check_tree(store)


# --- the refusal as each vendor renders it -----------------------------------------------------------

def test_every_vendor_names_the_cap_hit_in_x_keybrake_cap():
    from keybrake_addon.vendors import resend, stripe, twilio
    from keybrake_addon.vendors.base import Refusal

    for vendor in (stripe, twilio, resend):
        budget_hit = vendor.render_refusal(Refusal(RefusalKind.CAP_EXCEEDED, "over", cap="budget:org"))
        assert budget_hit.status == 429
        assert (budget_hit.headers["x-keybrake-cap-hit"], budget_hit.headers["x-keybrake-cap"]) == ("true", "budget:org")
        key_hit = vendor.render_refusal(Refusal(RefusalKind.MAX_CALLS_EXCEEDED, "over", cap="key"))
        assert key_hit.headers["x-keybrake-cap"] == "key"
        assert "x-keybrake-cap" not in vendor.render_refusal(Refusal(RefusalKind.KEY_REVOKED, "no")).headers


@pytest.mark.parametrize(("resolution", "actual", "after"), [
    (Resolution.SETTLE, 30_000_000, 40_000_000),  # the vendor's price
    (Resolution.SETTLE, None, 20_000_000),  # no price in the answer: the hold is what is spent
    (Resolution.UNKNOWN, None, 20_000_000),  # may have moved: stays counted
    (Resolution.RELEASE, None, 70_000_000),
])
def test_a_budgets_headroom_after_a_call_follows_how_it_settles(resolution, actual, after):
    moved = dict(opened=True, reserved_micros=50_000_000, resolution=resolution, actual_micros=actual)
    assert decisions.headroom_after(70_000_000, **moved) == after
    assert decisions.headroom_after(None, **moved) is None  # no capped budget
    assert decisions.headroom_after(70_000_000, **{**moved, "opened": False}) == 70_000_000  # a retry's hold was in it
    assert decisions.headroom_after(10_000_000, **{**moved, "resolution": Resolution.UNKNOWN}) == 0  # never below 0
    if resolution is Resolution.SETTLE:  # a replay to the opener: nothing moved, as balance_after shows it
        assert decisions.headroom_after(70_000_000, **moved, replayed=True) == 70_000_000
