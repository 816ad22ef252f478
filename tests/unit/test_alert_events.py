"""ledger/alert_events.py: which events a change causes, as a pure function of old and new state."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keybrake_addon.alerts.sending import slack_text
from keybrake_addon.ledger import alert_events
from keybrake_addon.ledger.alert_store import BatchAlerts
from keybrake_addon.ledger.alert_events import (
    BUDGET_CAP_HIT,
    BUDGET_THRESHOLD_CROSSED,
    CAP_HIT,
    LEDGER_RECOVERED,
    LEDGER_UNAVAILABLE,
    THRESHOLD_CROSSED,
    AlertEvent,
    Rule,
    Rules,
    budget_cap_hit,
    budget_thresholds,
    key_cap_hit,
    key_thresholds,
)
from keybrake_addon.ledger.base import KeyRecord, KeySpec
from keybrake_addon.ledger.decisions import (
    BudgetState,
    KeyCounters,
    ReservationState,
    budget_cap_refusal,
    cap_refusal,
    caps_refusal,
)
from keybrake_addon.vendors.base import Refusal, RefusalKind

USD = 1_000_000
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
DAY = "2026-11-28"


def spec(daily=None, total=None, max_calls=None, label="billing/run-1", vendor="stripe") -> KeySpec:
    return KeySpec(vendor, "default", label, daily, total, max_calls, (), True, False, None)


def counters(day_used=0, total_used=None, day=DAY, reserved=0) -> KeyCounters:
    total_used = day_used if total_used is None else total_used
    return KeyCounters(total_used - reserved, reserved, 0, day, day_used - reserved, reserved)


def crossed(before, after, *, daily=100 * USD, total=None, thresholds=(50, 80, 100)):
    return [(e.data["cap"], e.threshold) for e in
            key_thresholds("kbk_a", spec(daily, total), before, after, thresholds, NOW)]


@pytest.mark.parametrize("before, after, expected", [
    (0, 49 * USD, []),
    (0, 50 * USD, [("daily", 50)]),  # at the threshold counts as crossing it
    (49 * USD, 81 * USD, [("daily", 50), ("daily", 80)]),  # one change may cross several
    (50 * USD, 79 * USD, []),  # already above 50: nothing new
    (80 * USD, 100 * USD, [("daily", 100)]),
    (90 * USD, 70 * USD, []),  # going down crosses nothing
    (79_999_999, 80 * USD, [("daily", 80)]),  # exact in micros
])
def test_a_threshold_fires_when_usage_goes_from_below_to_at_or_above_it(before, after, expected):
    assert crossed(counters(before), counters(after)) == expected


def test_holds_count_as_usage_like_the_cap_check_counts_them():
    assert crossed(counters(0), counters(80 * USD, reserved=80 * USD)) == [("daily", 50), ("daily", 80)]


def test_a_new_day_starts_the_daily_usage_from_zero_and_has_its_own_identity():
    yesterday = counters(90 * USD, day="2026-11-27")
    events = key_thresholds("kbk_a", spec(100 * USD), yesterday, counters(85 * USD, total_used=175 * USD),
                            (50, 80), NOW)
    assert [(e.threshold, e.data["window"]) for e in events] == [(50, DAY), (80, DAY)]
    assert events[1].identity == f"{THRESHOLD_CROSSED}/kbk_a/daily/80/{DAY}"


def test_the_total_cap_has_one_window_for_the_key_s_whole_life():
    events = key_thresholds("kbk_a", spec(total=200 * USD), counters(10 * USD, total_used=150 * USD),
                            counters(20 * USD, total_used=160 * USD), (80,), NOW)
    assert [(e.data["cap"], e.data["window"], e.identity) for e in events] == [
        ("total", "all", f"{THRESHOLD_CROSSED}/kbk_a/total/80/all")]


def test_without_thresholds_or_caps_nothing_is_derived():
    assert crossed(counters(0), counters(100 * USD), thresholds=()) == []
    assert crossed(counters(0), counters(100 * USD), daily=None) == []
    assert crossed(counters(0), counters(0), daily=0) == []  # a zero cap's news is the cap hit


def test_the_payload_carries_the_key_amounts_in_dollars_the_cap_and_the_time():
    (event,) = key_thresholds("kbk_a", spec(100 * USD), counters(70 * USD), counters(85 * USD, reserved=5 * USD),
                              (80,), NOW)
    body = json.loads(event.payload())
    assert body == {"type": THRESHOLD_CROSSED, "timestamp": "2026-11-28T12:00:00.000000Z", "data": {
        "key_id": "kbk_a", "label": "billing/run-1", "vendor": "stripe", "cap": "daily", "cap_usd": "100.00",
        "threshold_percent": 80, "used_usd": "85.00", "spent_usd": "80.00", "reserved_usd": "5.00",
        "window": DAY, "at": "2026-11-28T12:00:00.000000Z"}}
    assert event.id == alert_events.event_id(event.identity) and event.id.startswith("evt_")


@given(st.lists(st.integers(min_value=-30 * USD, max_value=40 * USD), max_size=40),
       st.sets(st.integers(min_value=1, max_value=100), min_size=1, max_size=5))
def test_any_walk_of_usage_crosses_each_threshold_at_most_once_per_rise(steps, thresholds):
    """Whatever the order of holds and releases, the events derived are exactly the rises across
    each threshold (the outbox then keeps one per identity)."""
    cap, used, seen = 100 * USD, 0, []
    for step in steps:
        after = max(0, used + step)
        seen += crossed(counters(used), counters(after), daily=cap, thresholds=sorted(thresholds))
        used = after
    for threshold in thresholds:
        level = threshold * cap
        rises, below = 0, True
        walk = 0
        for step in steps:
            walk = max(0, walk + step)
            if below and walk * 100 >= level:
                rises += 1
            below = walk * 100 < level
        assert seen.count(("daily", threshold)) == rises


def record(spec_, *, spent=0, reserved=0, today_spent=0, today_reserved=0, calls=0) -> KeyRecord:
    return KeyRecord("kbk_a", spec_, NOW, None, spent, reserved, calls, today_spent, today_reserved)


@pytest.mark.parametrize("spec_, extra, cap", [
    (spec(daily=100 * USD, total=1000 * USD), 60 * USD, "daily"),
    (spec(daily=100 * USD, total=120 * USD), 30 * USD, "total"),
])
def test_a_cap_hit_names_the_cap_that_refused(spec_, extra, cap):
    key = record(spec_, spent=95 * USD, today_spent=50 * USD)
    refusal = cap_refusal(key, total_extra=extra, daily_extra=extra, new_call=True)
    event = key_cap_hit(key, refusal, DAY, NOW)
    assert (event.kind, event.data["cap"], event.identity) == (CAP_HIT, cap, f"{CAP_HIT}/kbk_a/{DAY}")
    assert event.data["cap_usd"] == ("100.00" if cap == "daily" else "120.00")


def test_every_refusal_of_a_window_derives_the_same_cap_hit_and_other_refusals_none():
    key = record(spec(max_calls=3), calls=3)
    refusal = cap_refusal(key, total_extra=0, daily_extra=0, new_call=True)
    first, second = (key_cap_hit(key, refusal, DAY, NOW + timedelta(seconds=s)) for s in (0, 5))
    assert first.identity == second.identity and first.data["cap"] == "calls"
    assert key_cap_hit(key, Refusal(RefusalKind.NOT_ALLOWED, "no"), DAY, NOW) is None


def test_a_reservation_becomes_unknown_once():
    pending = ReservationState(7, "kbk_a", "POST /v1/charges", NOW, "pending", DAY, 5 * USD, 1, 0)
    unknown = ReservationState(7, "kbk_a", "POST /v1/charges", NOW, "unknown", DAY, 5 * USD, 0, 0)
    assert alert_events.became_unknown(pending, "unknown")
    assert not alert_events.became_unknown(unknown, "unknown")
    assert not alert_events.became_unknown(pending, "settled")
    event = alert_events.reservation_unknown(pending, "kbk_a", spec(100 * USD), alert_events.UNKNOWN_ANSWER, NOW)
    assert event.data["reserved_usd"] == "5.00" and event.identity == "reservation.unknown/7"


def test_an_expired_key_is_news_only_with_money_reserved():
    assert alert_events.key_expired(record(spec(100 * USD), reserved=0), NOW) is None
    assert alert_events.key_expired(record(spec(100 * USD), reserved=USD), NOW).data["reserved_usd"] == "1.00"


def test_an_outage_is_two_events_with_its_start_and_end():
    down, up = alert_events.ledger_outage("run1", "host", NOW, NOW + timedelta(seconds=42), "gone")
    assert (down.kind, up.kind) == (LEDGER_UNAVAILABLE, LEDGER_RECOVERED)
    assert down.data == up.data and up.data["seconds"] == 42.0 and down.key_id is None


def event(kind=THRESHOLD_CROSSED, threshold=80, label="billing/run-1", vendor="stripe", key_id="kbk_a"):
    return AlertEvent(kind, "x", NOW, {}, key_id, label, vendor, threshold)


def test_rules_filter_by_event_threshold_label_prefix_and_vendor():
    rule = Rule("sub_1", frozenset({THRESHOLD_CROSSED, LEDGER_UNAVAILABLE}), frozenset({80}), "billing/", "stripe")
    assert rule.wants(event())
    assert not rule.wants(event(threshold=50))
    assert not rule.wants(event(label="other/run"))
    assert not rule.wants(event(label=None))
    assert not rule.wants(event(vendor="twilio"))
    assert not rule.wants(event(kind=CAP_HIT, threshold=None))
    # Events about the ledger name no key: the key filters do not apply to them.
    assert rule.wants(event(kind=LEDGER_UNAVAILABLE, threshold=None, label=None, vendor=None, key_id=None))


def test_rules_derive_only_the_thresholds_someone_wants():
    rules = Rules.of([Rule("a", frozenset({THRESHOLD_CROSSED}), frozenset({80, 100})),
                      Rule("b", frozenset({CAP_HIT}), frozenset({50}))])
    assert rules.thresholds == (80, 100) and rules.kinds == {THRESHOLD_CROSSED, CAP_HIT}
    assert rules.subscribers(event(threshold=100)) == ["a"]


# --- budgets --------------------------------------------------------------------------------------

def budget(name="support", parent="org", *, daily=None, total=None, used=(0, 0), day=DAY) -> BudgetState:
    """A budget whose day (first) and whole-life (second) usage is `used`, all of it spent."""
    day_used, total_used = used
    return BudgetState(name, parent, daily, total, None, KeyCounters(total_used, 0, 0, day, day_used, 0))


def test_a_budget_crosses_its_thresholds_like_a_key_one_identity_per_budget_cap_threshold_and_window():
    before = budget(daily=100 * USD, total=300 * USD, used=(70 * USD, 230 * USD))
    after = budget(daily=100 * USD, total=300 * USD, used=(85 * USD, 245 * USD))
    events = budget_thresholds(before, after, ("org",), (50, 80), NOW)
    assert [e.identity for e in events] == [f"{BUDGET_THRESHOLD_CROSSED}/support/daily/80/{DAY}",
                                            f"{BUDGET_THRESHOLD_CROSSED}/support/total/80/all"]
    assert budget_thresholds(after, after, ("org",), (50, 80), NOW) == []  # no rise, no news
    # A new day starts the daily usage from 0: yesterday's 90 % does not hide today's 85 %.
    yesterday = budget(daily=100 * USD, used=(90 * USD, 90 * USD), day="2026-11-27")
    (today,) = budget_thresholds(yesterday, budget(daily=100 * USD, used=(85 * USD, 175 * USD)), (), (80,), NOW)
    assert today.data["window"] == DAY and today.data["used_usd"] == "85.00"


def test_a_budget_event_names_the_budget_its_parent_and_ancestors_and_no_key():
    (event,) = budget_thresholds(budget("team", "dept", total=300 * USD, used=(0, 200 * USD)),
                                 budget("team", "dept", total=300 * USD, used=(0, 240 * USD)), ("dept", "org"),
                                 (80,), NOW)
    assert json.loads(event.payload()) == {"type": BUDGET_THRESHOLD_CROSSED, "timestamp": "2026-11-28T12:00:00.000000Z",
                                           "data": {
        "budget": "team", "parent": "dept", "ancestors": ["dept", "org"], "cap": "total", "cap_usd": "300.00",
        "threshold_percent": 80, "used_usd": "240.00", "spent_usd": "240.00", "reserved_usd": "0.00",
        "window": "all", "at": "2026-11-28T12:00:00.000000Z"}}
    assert (event.key_id, event.label, event.vendor, event.threshold) == (None, None, None, 80)


def test_a_refusal_by_a_budget_s_cap_is_the_budget_s_cap_hit_not_the_key_s():
    key = record(spec(total=1000 * USD, label="daily cap $1 / total cap $2"), spent=10 * USD)
    full = budget(daily=100 * USD, total=300 * USD, used=(90 * USD, 120 * USD))
    refusal = budget_cap_refusal(key, full, total_extra=20 * USD, daily_extra=20 * USD)
    assert key_cap_hit(key, refusal, DAY, NOW) is None
    event = budget_cap_hit(full, ("org",), key, refusal, DAY, NOW)
    assert (event.kind, event.identity, event.key_id) == (BUDGET_CAP_HIT, f"{BUDGET_CAP_HIT}/support/{DAY}", None)
    data = event.data
    # the cap is read from the end of the message: the key's label may say anything
    assert (data["budget"], data["parent"], data["cap"], data["cap_usd"]) == ("support", "org", "daily", "100.00")
    assert (data["today_spent_usd"], data["spent_usd"], data["refused_key_id"]) == ("90.00", "120.00", "kbk_a")
    later = budget_cap_hit(full, ("org",), key, refusal, DAY, NOW + timedelta(minutes=5))
    assert later.identity == event.identity  # every refusal of the window: one event in the outbox
    assert budget_cap_hit(full, (), key, refusal, "2026-11-29", NOW).identity != event.identity


def test_a_key_s_own_cap_is_named_from_the_end_of_its_message_whatever_its_label_says():
    key = record(spec(daily=100 * USD, total=120 * USD, label="daily cap $5"), spent=115 * USD, today_spent=50 * USD)
    refusal = cap_refusal(key, total_extra=10 * USD, daily_extra=10 * USD, new_call=True)
    assert key_cap_hit(key, refusal, DAY, NOW).data["cap"] == "total"


def test_a_batch_tells_each_budget_of_a_chain_once_and_a_budget_refusal_as_the_budget_s_only():
    rules = Rules.of([Rule("sub_1", frozenset(alert_events.KINDS), frozenset({80}), "elsewhere/", "twilio")])
    assert rules.budget_thresholds == (80,)
    locked = {"org": budget("org", None, total=125 * USD), "team": budget("team", "org", total=100 * USD)}
    alerts = BatchAlerts(rules)
    # one hold of $100: 100 % of team and 80 % of org
    alerts.budgets_changed(locked, (budget("team", "org", total=100 * USD, used=(100 * USD, 100 * USD)),
                                    budget("org", None, total=125 * USD, used=(100 * USD, 100 * USD))), NOW)
    assert sorted((e.data["budget"], e.data["ancestors"]) for e in alerts.events.values()) == [
        ("org", []), ("team", ["org"])]
    key = record(spec(total=1000 * USD))
    refusal = caps_refusal(key, (locked["team"].with_counters(KeyCounters(100 * USD, 0, 1, DAY, 100 * USD, 0)),),
                           total_extra=USD, daily_extra=USD, new_call=True)
    for _ in range(3):
        alerts.refused(key, refusal, NOW, locked)
    kinds_ = sorted(e.kind for e in alerts.events.values())
    assert kinds_ == [BUDGET_CAP_HIT, BUDGET_THRESHOLD_CROSSED, BUDGET_THRESHOLD_CROSSED]
    # the key filters do not narrow budget events: a budget spans labels and vendors
    assert all(rules.subscribers(e) == ["sub_1"] for e in alerts.events.values())


def test_budget_thresholds_are_derived_only_for_subscriptions_that_list_budget_events():
    rules = Rules.of([Rule("a", frozenset({THRESHOLD_CROSSED}), frozenset({80})),
                      Rule("b", frozenset({BUDGET_THRESHOLD_CROSSED}), frozenset({50, 100}))])
    assert (rules.thresholds, rules.budget_thresholds) == ((80,), (50, 100))
    alerts = BatchAlerts(Rules.of([Rule("a", frozenset({THRESHOLD_CROSSED, CAP_HIT}), frozenset({80}))]))
    alerts.budgets_changed({"org": budget("org", None, total=USD)}, (budget("org", None, total=USD, used=(USD, USD)),),
                           NOW)
    assert alerts.events == {}
    budget_event = budget_thresholds(budget(total=100 * USD), budget(total=100 * USD, used=(0, 60 * USD)), (),
                                     (50,), NOW)[0]
    assert rules.subscribers(budget_event) == ["b"]  # the threshold filter still applies


def test_ancestors_come_from_the_locked_budgets_nearest_first():
    locked = {"org": budget("org", None), "dept": budget("dept", "org"), "team": budget("team", "dept")}
    assert alert_events.ancestors_of(locked, "team") == ("dept", "org")
    assert alert_events.ancestors_of(locked, "org") == ()


def test_slack_says_which_budget_and_how_far():
    (event,) = budget_thresholds(budget(total=100 * USD), budget(total=100 * USD, used=(0, 80 * USD)), ("org",),
                                 (80,), NOW)
    text = slack_text(json.loads(event.payload()))
    assert "budget `support` (under `org`) is at 80% of its total cap: $80.00 of $100.00" in text
