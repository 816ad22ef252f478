"""Alerts in the ledger, on both backends: events written with the money, delivered from the outbox.

Exactly once in (one event per crossing, in the money's transaction, surviving a crash), at
least once out (retried with backoff, claimed by one deliverer at a time), verified on the
receiving side with the standardwebhooks library as a receiver would.
"""

import asyncio
import json
import os
import threading
import time
from collections import Counter
from dataclasses import replace
from datetime import timedelta

import pytest

from keybrake_addon.alerts.deliverer import (
    DELIVERY_RESULTS,
    Deliverer,
    deliver_due,
    retry_by_hand,
    send_test,
    write_outages,
)
from keybrake_addon.alerts.subscriptions import create, parse_request
from keybrake_addon.ledger import alert_store
from keybrake_addon.ledger.alert_events import (
    BUDGET_CAP_HIT,
    BUDGET_THRESHOLD_CROSSED,
    CAP_HIT,
    KINDS,
    EXPIRED,
    LEDGER_RECOVERED,
    LEDGER_UNAVAILABLE,
    RESERVATION_UNKNOWN,
    REVOKED,
    THRESHOLD_CROSSED,
)
from keybrake_addon.ledger.base import AdmitRequest, CallFacts, Resolution, SettleRequest
from keybrake_addon.ledger.corrections import resolve_by_hand
from keybrake_addon.ledger.executor import AsyncLedger
from keybrake_addon.ledger.outages import OutageWatch
from keybrake_addon.ledger.sqlite import SqliteLedger
from keybrake_addon.ledger.times import from_text
from keybrake_addon.vendors.base import CostEstimate

from support.webhooks import Receiver

from .conftest import KEY_HASH, USD, admit, settle, spec, with_key

MASTER_KEY = os.urandom(32)
CALL = CallFacts("stripe", "POST", "/v1/payment_intents", None, None)


def subscribe(ledger, url: str, **fields):
    fields.setdefault("allow_private", True)  # the receivers are on loopback
    return create(ledger, MASTER_KEY, parse_request(url, **fields))


def kinds(ledger) -> Counter:
    return Counter(e["kind"] for e in alert_store.events(ledger))


@pytest.fixture
def ledger(open_ledger):
    made = open_ledger()
    made.put_secret("stripe", "default", b"n" * 12, b"sealed", "fp", None)
    return made


def test_500_parallel_admits_crossing_80_percent_write_one_event(open_ledger, ledger):
    with_key(ledger, daily=500 * USD)
    subscribe(ledger, "http://127.0.0.1:9/", events=[THRESHOLD_CROSSED, CAP_HIT], thresholds=[80])
    request = AdmitRequest(KEY_HASH, CALL, CostEstimate(usd_micros=1_250_000))
    # Two replicas (or two proxy processes on one SQLite file), 250 calls each, at once.
    replicas = [AsyncLedger(open_ledger(), inline=open_ledger() if ledger.backend == "sqlite" else None)
                for _ in range(2)]

    async def run():
        return await asyncio.gather(*(replicas[i % 2].admit(request) for i in range(500)))

    admissions = asyncio.run(run())
    for replica in replicas:
        replica.close()
    assert sum(a.allowed for a in admissions) == 400  # $500 / $1.25
    assert kinds(ledger) == {THRESHOLD_CROSSED: 1, CAP_HIT: 1}  # 100 refusals, one cap hit
    (crossing,) = alert_store.events(ledger, THRESHOLD_CROSSED)
    data = json.loads(crossing["payload"])["data"]
    assert (data["threshold_percent"], data["used_usd"], data["cap_usd"]) == (80, "400.00", "500.00")
    assert len(alert_store.deliveries(ledger)) == 2


def test_a_crash_between_commit_and_delivery_loses_nothing(open_ledger, ledger, clock):
    with_key(ledger, daily=100 * USD)
    with Receiver() as receiver:
        _, secret = subscribe(ledger, receiver.url, thresholds=[50])
        admit(ledger, 60)
        ledger.close()  # the process dies with the event committed and nothing sent

        reopened = open_ledger()
        claimed = alert_store.claim_due(reopened)  # claimed, then the process dies mid-send
        assert claimed is not None and claimed.kind == THRESHOLD_CROSSED
        reopened.close()

        again = open_ledger()
        assert alert_store.claim_due(again) is None  # its lease keeps other deliverers off for a while
        clock.advance(minutes=3)
        assert deliver_due(again, MASTER_KEY) == 1
        (got,) = receiver.received
    assert got.verified(secret)["data"]["key_id"] == "kbk_test"
    assert got.id == claimed.event_id  # the same webhook-id on every attempt: a receiver drops repeats
    assert alert_store.deliveries(again)[0]["state"] == "delivered"
    assert not alert_store.has_due(again)


def test_a_failing_receiver_is_retried_with_backoff_listed_and_retried_by_hand(ledger, clock):
    with_key(ledger, daily=100 * USD)
    counted_before = DELIVERY_RESULTS.snapshot()
    with Receiver(statuses=(500,)) as receiver:
        subscription, secret = subscribe(ledger, receiver.url, thresholds=[80])
        admit(ledger, 90)
        waits = []
        for _ in range(4):
            assert deliver_due(ledger, MASTER_KEY) == 1
            (failed,) = [d for d in alert_store.deliveries(ledger, failed=True) if d["subscription_id"] == subscription.id]
            waits.append(failed["next_attempt_at"])
            assert deliver_due(ledger, MASTER_KEY) == 0  # not due again before its backoff
            clock.set(from_text(failed["next_attempt_at"]))
        gaps = [(from_text(b) - from_text(a)).total_seconds() for a, b in zip(waits, waits[1:])]
        assert gaps == [60, 120, 240]  # 30 s, then twice as long each time
        assert (failed["state"], failed["attempts"], failed["last_status"]) == ("pending", 4, 500)
        assert failed["last_error"] == "the receiver answered HTTP 500"

        # Still failing a day later: given up, and listed as failed until retried by hand.
        for _ in range(40):
            clock.advance(hours=1)
            deliver_due(ledger, MASTER_KEY)
        (given_up,) = alert_store.deliveries(ledger, failed=True)
        assert given_up["state"] == "failed" and 20 < given_up["attempts"] < 40
        assert deliver_due(ledger, MASTER_KEY) == 0
        receiver.answer(204)
        retried = retry_by_hand(ledger, MASTER_KEY, given_up["id"])
        assert (retried["state"], retried["last_status"]) == ("delivered", 204)
        assert alert_store.deliveries(ledger, failed=True) == []
        with pytest.raises(ValueError, match="delivered"):
            retry_by_hand(ledger, MASTER_KEY, given_up["id"])
        assert {r.id for r in receiver.received} == {given_up["event_id"]}
        assert receiver.received[-1].verified(secret)["type"] == THRESHOLD_CROSSED
    counted = {name: n - counted_before[name] for name, n in DELIVERY_RESULTS.snapshot().items()}
    assert counted == {"delivered": 1, "retrying": given_up["attempts"] - 1, "failed": 1, "cancelled": 0}


def test_two_deliverers_deliver_each_event_once(open_ledger, ledger):
    for index in range(20):
        with_key(ledger, f"kbk_{index:02}", f"{index:02}" * 32, daily=10 * USD)
    with Receiver(delay_s=0.02) as receiver:
        _, secret = subscribe(ledger, receiver.url, events=[THRESHOLD_CROSSED], thresholds=[80])
        for index in range(20):
            admit(ledger, 9, key_hash=f"{index:02}" * 32)
        deliverers = [open_ledger(), open_ledger()]
        sent = [0, 0]

        def run(which):
            while alert_store.has_due(deliverers[which]):
                sent[which] += deliver_due(deliverers[which], MASTER_KEY)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        ids = Counter(r.id for r in receiver.received)
    assert len(ids) == 20 and set(ids.values()) == {1}, ids
    assert sum(sent) == 20
    assert all(r.verified(secret) for r in receiver.received)
    assert {d["state"] for d in alert_store.deliveries(ledger)} == {"delivered"}


def test_revoking_writes_one_event_in_the_revoking_transaction(ledger):
    with_key(ledger, total=100 * USD)
    with_key(ledger, "kbk_other", "o" * 64, total=100 * USD)
    subscribe(ledger, "http://127.0.0.1:9/", events=[REVOKED])
    admit(ledger, 30)
    assert ledger.revoke_key("kbk_test")
    assert ledger.revoke_key("kbk_test")  # twice: still one event
    assert sorted(ledger.revoke_label("run")) == ["kbk_other", "kbk_test"]
    payloads = [json.loads(e["payload"])["data"] for e in alert_store.events(ledger, REVOKED)]
    assert sorted((p["key_id"], p["reserved_usd"]) for p in payloads) == [("kbk_other", "0.00"),
                                                                          ("kbk_test", "30.00")]


def test_a_hold_that_becomes_unknown_is_an_event_once(ledger):
    with_key(ledger, total=100 * USD)
    subscribe(ledger, "http://127.0.0.1:9/", events=[RESERVATION_UNKNOWN])
    admission = admit(ledger, 20, idem="charge-1")
    settle(ledger, admission, Resolution.UNKNOWN, status=502)
    retry = admit(ledger, 20, idem="charge-1")  # a retry attaches; its answer is unknown too
    settle(ledger, retry, Resolution.UNKNOWN, status=502)
    (event,) = alert_store.events(ledger, RESERVATION_UNKNOWN)
    data = json.loads(event["payload"])["data"]
    assert (data["reservation_id"], data["reserved_usd"]) == (admission.reservation_id, "20.00")
    assert "did not say" in data["reason"]


def test_the_sweep_finds_holds_of_a_proxy_run_that_is_gone(ledger):
    with_key(ledger, total=100 * USD)
    subscribe(ledger, "http://127.0.0.1:9/", events=[RESERVATION_UNKNOWN])
    ledger.register_run("deadrun", 1, "elsewhere")
    ledger.register_run("liverun", 2, "elsewhere")
    held = admit(ledger, 15, run_id="deadrun")
    admit(ledger, 5, run_id="liverun")
    sweeper = alert_store.Sweeper(ledger)
    assert sweeper.sweep() == 0  # both runs still beat
    ledger.stop_run("deadrun")
    assert sweeper.sweep() == 1
    assert sweeper.sweep() == 0
    (event,) = alert_store.events(ledger, RESERVATION_UNKNOWN)
    data = json.loads(event["payload"])["data"]
    assert (data["reservation_id"], data["reserved_usd"]) == (held.reservation_id, "15.00")
    assert "stopped" in data["reason"]


def test_the_sweep_finds_a_key_that_expired_with_money_reserved(open_ledger, ledger, clock):
    from .conftest import spec

    ledger.create_key("kbk_test", KEY_HASH, spec(total=100 * USD, expires_at=clock.now + timedelta(hours=1)))
    ledger.create_key("kbk_idle", "i" * 64, spec(total=100 * USD, expires_at=clock.now + timedelta(hours=1)))
    subscribe(ledger, "http://127.0.0.1:9/", events=[EXPIRED])
    admit(ledger, 25)
    sweeper = alert_store.Sweeper(ledger)
    assert sweeper.sweep() == 0
    clock.advance(hours=2)
    assert sweeper.sweep() == 1  # the idle key expired with nothing reserved: no news
    assert alert_store.Sweeper(ledger).sweep() == 0  # a restarted proxy finds it again: not written twice
    (event,) = alert_store.events(ledger, EXPIRED)
    assert json.loads(event["payload"])["data"]["reserved_usd"] == "25.00"


def test_a_settlement_by_hand_that_crosses_a_threshold_is_an_event(ledger):
    with_key(ledger, total=100 * USD)
    subscribe(ledger, "http://127.0.0.1:9/", thresholds=[80])
    admission = admit(ledger, 70)
    settle(ledger, admission, Resolution.UNKNOWN, status=502)
    resolve_by_hand(ledger, admission.reservation_id, 90 * USD)
    (event,) = alert_store.events(ledger, THRESHOLD_CROSSED)
    assert json.loads(event["payload"])["data"]["spent_usd"] == "90.00"


def test_subscriptions_filter_and_removal_cancels_pending_deliveries(ledger):
    with_key(ledger, total=100 * USD)
    other, _ = subscribe(ledger, "http://127.0.0.1:9/a", label_prefix="elsewhere/", thresholds=[50])
    twilio, _ = subscribe(ledger, "http://127.0.0.1:9/b", vendor="twilio", thresholds=[50])
    mine, _ = subscribe(ledger, "http://127.0.0.1:9/c", label_prefix="ru", vendor="stripe", thresholds=[50])
    admit(ledger, 60)
    assert [d["subscription_id"] for d in alert_store.deliveries(ledger)] == [mine.id]
    assert {s.id for s in alert_store.subscriptions(ledger)} == {other.id, twilio.id, mine.id}
    assert alert_store.remove_subscription(ledger, mine.id) == 1
    assert alert_store.remove_subscription(ledger, mine.id) is None
    assert alert_store.deliveries(ledger)[0]["state"] == "cancelled"
    assert not alert_store.has_due(ledger)


def test_delivery_refuses_a_private_address_without_allow_private(ledger):
    with_key(ledger, total=100 * USD)
    with Receiver() as receiver:
        port = receiver.url.split(":")[2].split("/")[0]
        # A name is accepted when added, and judged at each delivery by the address it resolves to.
        subscribe(ledger, f"http://localhost:{port}/hook", allow_private=False, thresholds=[50])
        admit(ledger, 60)
        assert deliver_due(ledger, MASTER_KEY) == 1
        assert receiver.received == []
    (delivery,) = alert_store.deliveries(ledger, failed=True)
    assert delivery["last_error"].startswith("refused: localhost resolves to a loopback address")


def test_slack_format_posts_text_and_a_test_event_verifies(ledger):
    with_key(ledger, daily=100 * USD)
    with Receiver() as receiver:
        subscription, secret = subscribe(ledger, receiver.url, fmt="slack", thresholds=[80])
        admit(ledger, 85)
        deliver_due(ledger, MASTER_KEY)
        event_id, result = send_test(ledger, MASTER_KEY, subscription.id)
        slack, test = receiver.received
    text = slack.verified(secret)["text"]
    assert "kbk_test" in text and "80% of its daily cap" in text and "$85.00 of $100.00" in text
    assert result.delivered and test.id == event_id
    assert "a test event" in test.verified(secret)["text"]  # a Slack subscription's test is Slack-shaped too


def test_the_ledger_s_outage_is_recorded_when_it_answers_again(ledger):
    subscribe(ledger, "http://127.0.0.1:9/", events=[LEDGER_UNAVAILABLE, LEDGER_RECOVERED])
    moments = iter([from_text("2026-11-28T12:00:00Z"), from_text("2026-11-28T12:00:40Z")])
    watch = OutageWatch(clock=lambda: next(moments))
    watch.failed(ConnectionError("the ledger is unavailable: OperationalError (08006)"))
    watch.failed(ConnectionError("a later failure"))
    watch.answered(writing=False)  # a read answering does not end an outage of writes
    assert watch.down
    watch.answered()
    write_outages(ledger, watch, "run1", "host1")
    write_outages(ledger, watch, "run1", "host1")  # taken once
    assert kinds(ledger) == {LEDGER_UNAVAILABLE: 1, LEDGER_RECOVERED: 1}
    data = json.loads(alert_store.events(ledger, LEDGER_RECOVERED)[0]["payload"])["data"]
    assert (data["seconds"], data["reason"]) == (40.0, "the ledger is unavailable: OperationalError (08006)")


def test_a_stopped_postgresql_is_reported_once_it_is_back(owned_pg):
    from keybrake_addon.ledger.postgres import PostgresLedger

    ledger = PostgresLedger(owned_pg.url, where="test", connect_timeout_s=1)
    try:
        with Receiver() as receiver:
            _, secret = subscribe(ledger, receiver.url, events=[LEDGER_UNAVAILABLE, LEDGER_RECOVERED])
            deliverer = Deliverer(ledger, MASTER_KEY, run_id="run1", interval_s=3600)  # rounds driven here
            deliverer.round()
            owned_pg.stop()
            deliverer.round()
            assert deliverer.outages.down
            time.sleep(1.5)  # an outage shorter than a second is no news
            owned_pg.start()
            for _ in range(100):
                deliverer.round()
                if len(receiver.received) == 2:
                    break
            deliverer.stop()
            down, up = (r.verified(secret) for r in receiver.received)
        assert (down["type"], up["type"]) == (LEDGER_UNAVAILABLE, LEDGER_RECOVERED)
        assert down["data"]["seconds"] >= 1 and down["data"]["run_id"] == "run1"
    finally:
        ledger.close()


# --- budgets ----------------------------------------------------------------------------------------

def budget_key(ledger, n: int, budget: str, **caps) -> str:
    """Key kbk_00n spending from `budget`, its hash n's digits."""
    ledger.create_key(f"kbk_{n:03d}", f"{n:064d}", replace(spec(**caps), budget=budget))
    return f"{n:064d}"


def data_of(ledger, kind: str) -> list[dict]:
    return [json.loads(e["payload"])["data"] for e in alert_store.events(ledger, kind)]


def test_ten_keys_racing_through_a_300_dollar_budget_cross_80_percent_once_and_hit_its_cap_once(open_ledger, ledger):
    ledger.create_budget("agents", parent=None, daily_cap_micros=None, total_cap_micros=300 * USD)
    hashes = [budget_key(ledger, n, "agents", total=1000 * USD) for n in range(10)]
    # Filtered to other keys, and still told: a budget's events are about no one key.
    narrowed, _ = subscribe(ledger, "http://127.0.0.1:9/a", thresholds=[80], label_prefix="elsewhere/", vendor="twilio")
    everything, _ = subscribe(ledger, "http://127.0.0.1:9/b", thresholds=[80])
    replicas = [AsyncLedger(open_ledger(), inline=open_ledger() if ledger.backend == "sqlite" else None)
                for _ in range(2)]

    async def run():
        # Each replica serves its own keys, so only the budget's row stands between them.
        calls = [replicas[n % 2].admit(AdmitRequest(hashes[n], CALL, CostEstimate(30 * USD)))
                 for _ in range(30) for n in range(10)]
        admissions = await asyncio.gather(*calls)
        for admission in admissions:
            if admission.allowed:
                replicas[0].settle(SettleRequest(admission.audit_id, admission.reservation_id, Resolution.SETTLE,
                                                 None, 200, (), None, None, None, False, 1.0))
        assert (await replicas[0].drain(10)).left == 0
        return admissions

    try:
        admissions = asyncio.run(run())
    finally:
        for replica in replicas:
            replica.close()
    assert sum(a.allowed for a in admissions) == 10  # $300 / $30
    assert kinds(ledger) == {BUDGET_THRESHOLD_CROSSED: 1, BUDGET_CAP_HIT: 1}  # 290 refusals: no key.cap_hit
    (crossed,) = data_of(ledger, BUDGET_THRESHOLD_CROSSED)
    assert (crossed["budget"], crossed["parent"], crossed["cap"], crossed["threshold_percent"]) == (
        "agents", None, "total", 80)
    assert (crossed["used_usd"], crossed["cap_usd"], crossed["window"]) == ("240.00", "300.00", "all")
    (hit,) = data_of(ledger, BUDGET_CAP_HIT)
    assert (hit["budget"], hit["cap"], hit["cap_usd"], hit["window"]) == ("agents", "total", "300.00", "2026-11-28")
    assert hit["refused_key_id"].startswith("kbk_") and "budget agents" in hit["message"]
    deliveries = alert_store.deliveries(ledger)
    assert sorted(d["subscription_id"] for d in deliveries) == sorted([narrowed.id, everything.id] * 2)
    assert {d["key_id"] for d in deliveries} == {None}


def test_a_call_crossing_a_child_and_its_parent_is_one_event_for_each(ledger):
    ledger.create_budget("org", parent=None, daily_cap_micros=None, total_cap_micros=125 * USD)
    ledger.create_budget("team", parent="org", daily_cap_micros=None, total_cap_micros=100 * USD)
    in_team, in_org = budget_key(ledger, 1, "team"), budget_key(ledger, 2, "org")
    subscribe(ledger, "http://127.0.0.1:9/", events=[BUDGET_THRESHOLD_CROSSED, BUDGET_CAP_HIT, CAP_HIT],
              thresholds=[80])
    assert admit(ledger, 100, key_hash=in_team).allowed  # team at 100 %, org at 80 %
    crossed = {d["budget"]: d for d in data_of(ledger, BUDGET_THRESHOLD_CROSSED)}
    assert set(crossed) == {"team", "org"}
    assert (crossed["team"]["parent"], crossed["team"]["ancestors"], crossed["org"]["parent"]) == ("org", ["org"], None)
    assert (crossed["team"]["used_usd"], crossed["org"]["used_usd"]) == ("100.00", "100.00")

    assert admit(ledger, 1, key_hash=in_team).refusal.cap == "budget:team"
    assert admit(ledger, 30, key_hash=in_org).refusal.cap == "budget:org"
    assert not admit(ledger, 30, key_hash=in_org).allowed  # the same window: no second cap hit
    hits = {d["budget"]: d for d in data_of(ledger, BUDGET_CAP_HIT)}
    assert (hits["team"]["refused_key_id"], hits["org"]["refused_key_id"]) == ("kbk_001", "kbk_002")
    assert kinds(ledger) == {BUDGET_THRESHOLD_CROSSED: 2, BUDGET_CAP_HIT: 2}


def test_a_budget_threshold_is_news_once_per_day_for_a_daily_cap(ledger, clock):
    ledger.create_budget("daily", parent=None, daily_cap_micros=100 * USD, total_cap_micros=None)
    key = budget_key(ledger, 1, "daily")
    subscribe(ledger, "http://127.0.0.1:9/", events=[BUDGET_THRESHOLD_CROSSED], thresholds=[50])
    released = admit(ledger, 60, key_hash=key)
    settle(ledger, released, Resolution.RELEASE)  # back under 50 %...
    admit(ledger, 60, key_hash=key)  # ...and across it again: the same day, the same event
    clock.advance(days=1)
    admit(ledger, 60, key_hash=key)
    assert [d["window"] for d in data_of(ledger, BUDGET_THRESHOLD_CROSSED)] == ["2026-11-28", "2026-11-29"]


def test_a_correction_by_hand_that_crosses_a_budget_threshold_is_an_event(ledger):
    ledger.create_budget("org", parent=None, daily_cap_micros=None, total_cap_micros=100 * USD)
    key = budget_key(ledger, 1, "org")
    subscribe(ledger, "http://127.0.0.1:9/", events=[BUDGET_THRESHOLD_CROSSED], thresholds=[80])
    admission = admit(ledger, 50, key_hash=key)
    settle(ledger, admission, Resolution.UNKNOWN, status=502)
    resolve_by_hand(ledger, admission.reservation_id, 90 * USD)
    (crossed,) = data_of(ledger, BUDGET_THRESHOLD_CROSSED)
    assert (crossed["budget"], crossed["spent_usd"]) == ("org", "90.00")


def test_budget_alerts_ask_the_database_nothing_more(tmp_path):
    """A key outside every budget reads no budget even when budget events are subscribed; a key in
    one reads and writes its budgets once, crossing thresholds or not."""
    ledger = SqliteLedger(tmp_path / "l.db")
    ledger.put_secret("stripe", "default", b"n" * 12, b"sealed", "fp", None)
    ledger.create_budget("team", parent=None, daily_cap_micros=None, total_cap_micros=10 * USD)
    with_key(ledger, total=10 * USD)
    in_budget = budget_key(ledger, 2, "team")
    subscribe(ledger, "http://127.0.0.1:9/", events=list(KINDS), thresholds=[50])
    statements: list[str] = []
    ledger.database._db.set_trace_callback(statements.append)
    try:
        settle(ledger, admit(ledger, 6), Resolution.SETTLE)  # crosses the key's 50 %
        assert statements and not [s for s in statements if "budgets" in s]
        admit(ledger, 6, key_hash=in_budget)  # crosses the budget's 50 %
        assert len([s for s in statements if "budgets" in s]) == 2  # one read with the locks, one write
    finally:
        ledger.database._db.set_trace_callback(None)
    assert kinds(ledger) == {THRESHOLD_CROSSED: 1, BUDGET_THRESHOLD_CROSSED: 1}
    ledger.close()


CAPABILITY = "/services/T0KB/B0KB/capability0secret0part"  # a Slack webhook URL's path is its credential


def stored_text(ledger) -> str:
    """Every value of every subscription row, as a database dump would show it."""
    with ledger.database.reading() as tx:
        rows = tx.rows("SELECT * FROM alert_subscriptions")
    return " ".join(bytes(v).decode("latin-1") if isinstance(v, (bytes, memoryview)) else str(v)
                    for row in rows for v in dict(row).values())


def test_a_receivers_url_is_sealed_and_only_its_shown_form_is_stored(ledger):
    with_key(ledger, daily=100 * USD)
    with Receiver() as receiver:
        origin = receiver.url.removesuffix("/hooks/keybrake")
        subscription, secret = subscribe(ledger, origin + CAPABILITY + "?token=query0secret", thresholds=[80])
        admit(ledger, 85)
        deliver_due(ledger, MASTER_KEY)
        [delivered] = receiver.received
    assert delivered.path == CAPABILITY + "?token=query0secret"  # the deliverer opened the whole URL
    assert delivered.verified(secret)["type"] == THRESHOLD_CROSSED
    stored = stored_text(ledger)
    assert "capability0secret0part" not in stored and "query0secret" not in stored
    assert origin + "/services/T0KB/…?…" in stored  # what lists show


def test_a_url_stored_whole_by_a_release_before_is_sealed_at_the_deliverers_first_round(ledger):
    with_key(ledger, daily=100 * USD)
    with Receiver() as receiver:
        origin = receiver.url.removesuffix("/hooks/keybrake")
        subscription, secret = subscribe(ledger, origin + CAPABILITY, thresholds=[80])
        with ledger.database.transaction() as tx:  # as schema 12 stored it
            tx.run("UPDATE alert_subscriptions SET url = ?, url_nonce = NULL, url_ciphertext = NULL WHERE id = ?",
                   (origin + CAPABILITY, subscription.id))
        assert "capability0secret0part" in stored_text(ledger)
        admit(ledger, 85)
        deliverer = Deliverer(ledger, MASTER_KEY, run_id="run-test", interval_s=3600)
        try:
            deliverer.round()
        finally:
            deliverer.stop()
        [delivered] = receiver.received
    assert delivered.path == CAPABILITY
    assert "capability0secret0part" not in stored_text(ledger)
