"""The dashboard's reads, on each backend, against money moved through admit and settle.

Runs once per backend (the `open_ledger` fixture of tests/ledger/conftest.py parametrizes SQLite
and PostgreSQL). The database's clock is the test's, so "today" and "this month" are fixed.
"""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from keybrake_addon.ledger.base import Resolution
from keybrake_addon.ledger.dashboard_reads import AuditCursor, AuditQuery, DashboardReads, ReadScope
from keybrake_addon.ledger.dashboard_sessions import DashboardSessions

from .conftest import USD, admit, settle, spec

NOW = datetime(2026, 12, 2, 15, 30, tzinfo=UTC)
EVERYTHING = ReadScope.everything()


PATHS = {"stripe": "/v1/payment_intents", "twilio": "/2010-04-01/Accounts/AC1/Messages.json"}
VENDOR_OF: dict[str, str] = {}


def key(ledger, key_id: str, *, label: str | None = "run", vendor: str = "stripe", **caps) -> str:
    key_hash = key_id.ljust(64, "0")
    made = replace(spec(label=label, vendor=vendor, **caps), allowlist=(f"POST {PATHS[vendor]}",))
    ledger.create_key(key_id, key_hash, made)
    VENDOR_OF[key_hash] = vendor
    return key_hash


@pytest.fixture
def ledger(open_ledger, clock):
    clock.set(NOW)
    made = open_ledger()
    for vendor in ("stripe", "twilio"):
        made.put_secret(vendor, "default", b"n" * 12, b"sealed", "fp", None)
    return made


def charge(ledger, key_hash, usd, resolution=Resolution.SETTLE, actual=None):
    admission = ledger.admit(_request(key_hash, VENDOR_OF[key_hash], usd))
    if admission.allowed:
        settle(ledger, admission, resolution, usd if actual is None and resolution is Resolution.SETTLE else actual,
               "pi_x" if resolution is Resolution.SETTLE else None)
    return admission


def test_overview_counts_today_and_this_month_by_vendor(ledger, clock):
    # A key made last month, still spending this month: only this month's share counts.
    clock.set(datetime(2026, 11, 30, 23, 0, tzinfo=UTC))
    old = key(ledger, "kbk_old", total=1000 * USD)
    charge(ledger, old, 100)  # November: not this month
    clock.set(datetime(2026, 12, 1, 9, 0, tzinfo=UTC))
    charge(ledger, old, 7)
    # A key made this month, spending yesterday and today.
    new = key(ledger, "kbk_new", total=1000 * USD)
    charge(ledger, new, 20)
    clock.set(NOW)
    charge(ledger, new, 30)
    charge(ledger, new, 5, Resolution.UNKNOWN)  # held: counted as reserved, not spent
    overview = DashboardReads(ledger).overview(EVERYTHING)
    (stripe,) = overview.vendors
    assert (stripe.vendor, stripe.today_spent, stripe.today_reserved) == ("stripe", 30 * USD, 5 * USD)
    assert stripe.month_spent == (7 + 20 + 30) * USD
    assert (stripe.reserved, stripe.active_keys, overview.active_keys) == (5 * USD, 2, 2)
    assert (overview.unknown_holds, overview.unknown_micros, overview.open_holds) == (1, 5 * USD, 1)


def test_overview_counts_refusals_and_cap_hits_of_today_only(ledger, clock):
    capped = key(ledger, "kbk_capped", total=50 * USD)
    clock.set(NOW - timedelta(days=1))
    charge(ledger, capped, 40)
    assert not charge(ledger, capped, 20).allowed  # yesterday's cap hit
    clock.set(NOW)
    assert not charge(ledger, capped, 20).allowed
    assert not admit(ledger, 1, path="/v1/customers", key_hash=capped).allowed  # not on the allowlist
    overview = DashboardReads(ledger).overview(EVERYTHING)
    assert overview.refusals_today == {"keybrake_cap_exceeded": 1, "keybrake_endpoint_not_allowed": 1}
    assert (overview.cap_hits_today, overview.refused_today) == (1, 2)


def test_keys_above_80_percent_of_a_total_or_daily_cap(ledger, clock):
    at_79 = key(ledger, "kbk_79", total=100 * USD)
    charge(ledger, at_79, 79)
    at_80 = key(ledger, "kbk_80", total=100 * USD)
    charge(ledger, at_80, 80)
    daily = key(ledger, "kbk_daily", daily=10 * USD)
    charge(ledger, daily, 9.5)
    yesterday_daily = key(ledger, "kbk_yesterday", daily=10 * USD)
    clock.set(NOW - timedelta(days=1))
    charge(ledger, yesterday_daily, 9.5)  # a new day: its daily counters start again
    clock.set(NOW)
    revoked = key(ledger, "kbk_revoked", total=10 * USD)
    charge(ledger, revoked, 10)
    ledger.revoke_key("kbk_revoked")
    overview = DashboardReads(ledger).overview(EVERYTHING)
    assert [(n.key_id, n.window, n.used, n.cap) for n in overview.near_cap] == [
        ("kbk_daily", "daily", 9_500_000, 10 * USD), ("kbk_80", "total", 80 * USD, 100 * USD)]
    assert overview.near_cap_count == 2


def test_spend_per_hour_and_vendor_over_seven_days(ledger, clock):
    stripe = key(ledger, "kbk_s")
    twilio = key(ledger, "kbk_t", vendor="twilio")
    for hours_ago, key_hash, usd in ((1, stripe, 3), (1, stripe, 4), (1, twilio, 2), (30, stripe, 5), (24 * 8, stripe, 100)):
        clock.set(NOW - timedelta(hours=hours_ago))
        charge(ledger, key_hash, usd)
    clock.set(NOW)
    since, points = DashboardReads(ledger).spend_series(EVERYTHING)
    assert since == datetime(2026, 11, 25, 15, tzinfo=UTC)
    assert [(p.at, p.vendor, p.micros) for p in points] == [
        ("2026-12-01T09", "stripe", 5 * USD), ("2026-12-02T14", "stripe", 7 * USD), ("2026-12-02T14", "twilio", 2 * USD)]


def test_runs_roll_up_under_their_label_prefixes(ledger, clock):
    clock.set(NOW - timedelta(hours=3))
    first = key(ledger, "kbk_a1", label="trigger.dev/billing/run_1", total=10 * USD)
    key(ledger, "kbk_a2", label="trigger.dev/billing/run_1", vendor="twilio")
    charge(ledger, first, 8)
    assert not charge(ledger, first, 5).allowed
    clock.set(NOW - timedelta(hours=2))
    second = key(ledger, "kbk_a3", label="trigger.dev/billing/run_2", total=20 * USD)
    charge(ledger, second, 2)
    key(ledger, "kbk_c", label="trigger.dev/charge/run_9")
    ledger.revoke_key("kbk_c")
    clock.set(NOW - timedelta(hours=1))
    key(ledger, "kbk_n", label="nightly")
    key(ledger, "kbk_none", label=None)
    clock.set(NOW)
    reads = DashboardReads(ledger)
    top = reads.run_nodes(EVERYTHING)
    assert [(n.name, n.is_group, n.runs, n.keys) for n in top.nodes] == [
        ("nightly", False, 1, 1), ("(no label)", False, 1, 1), ("trigger.dev/", True, 3, 4)]
    assert (top.nodes[1].unlabelled, top.nodes[2].prefix, top.total) == (True, "trigger.dev/", 3)
    group = top.nodes[2]
    assert (group.spent, group.calls, group.cap_hits, group.active, group.revoked) == (10 * USD, 2, 1, 3, 1)
    assert (group.capped_keys, group.total_cap, group.capped_spent) == (2, 30 * USD, 10 * USD)
    assert (group.vendor_count, group.vendors) == (2, ("stripe", "twilio"))
    nested = reads.run_nodes(EVERYTHING, "trigger.dev/")
    assert [(n.name, n.prefix, n.status) for n in nested.nodes] == [
        ("charge/", "trigger.dev/charge/", "revoked"), ("billing/", "trigger.dev/billing/", "active")]
    runs = reads.run_nodes(EVERYTHING, "trigger.dev/billing/")
    assert [(n.name, n.label, n.spent, n.cap_hits, n.keys) for n in runs.nodes] == [
        ("run_2", "trigger.dev/billing/run_2", 2 * USD, 0, 1), ("run_1", "trigger.dev/billing/run_1", 8 * USD, 1, 2)]
    page_two = reads.run_nodes(EVERYTHING, limit=2, offset=2)
    assert ([n.name for n in page_two.nodes], page_two.total) == (["trigger.dev/"], 3)
    assert reads.run_nodes(EVERYTHING, "nothing/").nodes == []
    assert reads.run_cap_hits(EVERYTHING, "trigger.dev/billing/run_1") == 1
    assert [k.key_id for k in reads.run_keys(EVERYTHING, "")] == ["kbk_none"]


def test_audit_pages_newest_first_with_filters_and_a_cursor(ledger, clock):
    stripe = key(ledger, "kbk_s", label="a")
    twilio = key(ledger, "kbk_t", label="b", vendor="twilio")
    for minute in range(7):
        clock.set(NOW + timedelta(minutes=minute))
        charge(ledger, stripe if minute % 2 else twilio, 1)
    reads = DashboardReads(ledger)
    first = reads.audit_page(EVERYTHING, AuditQuery(), rows=3)
    second = reads.audit_page(EVERYTHING, AuditQuery(), first.next_cursor, rows=3)
    third = reads.audit_page(EVERYTHING, AuditQuery(), second.next_cursor, rows=3)
    times = [row["ts"] for page in (first, second, third) for row in page.rows]
    assert len(times) == 7 and times == sorted(times, reverse=True)
    assert third.next_cursor is None
    assert AuditCursor.parse(first.next_cursor.text()) == first.next_cursor
    assert {r["key_id"] for r in reads.audit_page(EVERYTHING, AuditQuery(vendor="twilio")).rows} == {"kbk_t"}
    assert len(reads.audit_page(EVERYTHING, AuditQuery(label="a")).rows) == 3
    window = AuditQuery(since=NOW + timedelta(minutes=2), until=NOW + timedelta(minutes=4))
    assert len(reads.audit_page(EVERYTHING, window).rows) == 2
    assert [len(chunk) for chunk in reads.audit_export(EVERYTHING, AuditQuery())] == [7]


def test_audit_filters_decisions(ledger):
    capped = key(ledger, "kbk_c", total=5 * USD)
    charge(ledger, capped, 4)
    charge(ledger, capped, 4)  # cap hit
    admit(ledger, 1, path="/v1/customers", key_hash=capped)  # not allowed
    reads = DashboardReads(ledger)
    decisions = {name: [r["decision"] for r in reads.audit_page(EVERYTHING, AuditQuery(decision=name)).rows]
                 for name in ("allowed", "refused", "cap_hit", "keybrake_endpoint_not_allowed")}
    assert decisions == {"allowed": ["allowed"],
                         "refused": ["keybrake_endpoint_not_allowed", "keybrake_cap_exceeded"],
                         "cap_hit": ["keybrake_cap_exceeded"],
                         "keybrake_endpoint_not_allowed": ["keybrake_endpoint_not_allowed"]}


def test_a_key_and_a_run_chart_their_spend_by_minute(ledger, clock):
    key_hash = key(ledger, "kbk_k", label="run_1")
    for minute, usd in ((0, 1), (0, 2), (5, 3)):
        clock.set(NOW + timedelta(minutes=minute, seconds=10))
        charge(ledger, key_hash, usd)
    charge(ledger, key_hash, 9, Resolution.RELEASE)  # no money moved: not on the chart
    reads = DashboardReads(ledger)
    expected = [("2026-12-02T15:30", 3 * USD), ("2026-12-02T15:35", 3 * USD)]
    assert [(p.at, p.micros) for p in reads.key_spend_series("kbk_k")] == expected
    assert [(p.at, p.micros) for p in reads.run_spend_series(EVERYTHING, "run_1")] == expected


def test_a_scope_narrows_every_read_to_its_labels_and_vendors(ledger):
    mine = key(ledger, "kbk_mine", label="team-a/run_1", total=100 * USD)
    theirs = key(ledger, "kbk_theirs", label="team-b/run_1", total=100 * USD)
    key(ledger, "kbk_sms", label="team-a/run_2", vendor="twilio")
    charge(ledger, mine, 10)
    charge(ledger, theirs, 90)
    admit(ledger, 1, path="/v1/customers", key_hash=theirs)
    reads = DashboardReads(ledger)
    team_a = ReadScope(label_prefixes=("team-a/",))
    overview = reads.overview(team_a)
    assert {v.vendor: v.today_spent for v in overview.vendors} == {"stripe": 10 * USD, "twilio": 0}
    assert (overview.refused_today, overview.near_cap_count) == (0, 0)
    assert [n.name for n in reads.run_nodes(team_a).nodes] == ["team-a/"]
    assert {n.label for n in reads.run_nodes(team_a, "team-a/").nodes} == {"team-a/run_1", "team-a/run_2"}
    assert reads.run_nodes(team_a, "team-b/").nodes == []
    assert {r["key_id"] for r in reads.audit_page(team_a, AuditQuery()).rows} == {"kbk_mine"}
    assert reads.key(team_a, "kbk_theirs") is None and reads.key(team_a, "kbk_mine") is not None
    stripe_only = ReadScope(label_prefixes=("team-a/",), vendors=("stripe",))
    assert [k.key_id for k in reads.run_keys(stripe_only, "team-a/run_2")] == []
    assert reads.key(stripe_only, "kbk_sms") is None


def test_sessions_end_on_sign_out_expiry_and_a_revoked_token(ledger, clock):
    from keybrake_addon.api.tokens import AdminTokens

    tokens = AdminTokens(ledger)
    issued, _ = tokens.create("ops")
    sessions = DashboardSessions(ledger)
    sessions.start("a" * 64, issued.token_id, timedelta(hours=12))
    sessions.start("b" * 64, issued.token_id, timedelta(hours=12))
    assert sessions.token_of("a" * 64) == issued.token_id
    assert sessions.end("a" * 64) and sessions.token_of("a" * 64) is None
    clock.advance(hours=13)
    assert sessions.token_of("b" * 64) is None  # expired
    sessions.start("c" * 64, issued.token_id, timedelta(hours=12))  # sweeps the expired one
    tokens.revoke(issued.token_id)
    assert sessions.token_of("c" * 64) is None


def _request(key_hash, vendor, usd):
    from keybrake_addon.ledger.base import AdmitRequest, CallFacts
    from keybrake_addon.vendors.base import CostEstimate

    return AdmitRequest(key_hash, CallFacts(vendor, "POST", PATHS[vendor], None, NOW), CostEstimate(usd_micros=int(usd * USD)))
