"""Batch scenarios: a cap holds exactly under 500 parallel calls through the official stripe SDK.

Every scenario runs a real `keybrake proxy` child process (or several on one home), a FakeStripe
with a little latency so calls really overlap, and 50 worker threads (50 client connections)
sharing one StripeClient per proxy. Assertions are about exact counts and exact dollars.
"""

import random
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from e2e.helpers import REAL_SECRET, keybrake_json
from keybrake_addon.fakes.fake_stripe import FakeStripe
from keybrake_addon.proxy_process import ProxyProcess

from .load import (
    CAP_HIT,
    assert_clean_log,
    MICROS_PER_CENT,
    MICROS_PER_USD,
    OK,
    client_via_env,
    client_via_param,
    count_rows,
    payment_intent,
    prepare_ca_bundle,
    run_batch,
    settled_ledger_row,
    usd,
)

CALLS = 500
WORKERS = 50
LATENCY_S = 0.03
ALLOW = ("--allow", "POST /v1/payment_intents")


@pytest.fixture
def slow_stripe():
    """A FakeStripe that answers after LATENCY_S, so 50 calls are in flight at once."""
    with FakeStripe(secret=REAL_SECRET, latency_s=LATENCY_S) as fake:
        yield fake


def start_proxies(home, fake, tmp_path, count: int) -> list[ProxyProcess]:
    """`count` proxy processes on one home, started in parallel (each waits for its own ready line)."""
    procs = [ProxyProcess(home=home, upstreams=(f"stripe={fake.url}",), log_path=tmp_path / f"proxy{i}.log")
             for i in range(count)]
    with ThreadPoolExecutor(max_workers=count) as pool:
        outcomes = list(pool.map(lambda p: _try_start(p), procs))
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    if failures:
        for proc in procs:
            proc.stop()
        raise failures[0]
    return procs


def _try_start(proc: ProxyProcess):
    try:
        return proc.start(timeout_s=60)
    except BaseException as error:  # noqa: BLE001 - re-raised by the caller after stopping the rest
        return error


def assert_no_surprises(batch) -> None:
    others = batch.others()
    assert not others, f"{len(others)} calls ended otherwise: " + "; ".join(
        f"#{c.index} {c.outcome} {c.detail}" for c in others[:5])


@pytest.mark.parametrize("cap_usd, expected_ok", [(500, 10), (475, 9)], ids=["cap500", "cap475"])
def test_500_customer_batch_stops_exactly_at_the_daily_cap(home, issue, tmp_path, monkeypatch, figures,
                                                           slow_stripe, cap_usd, expected_ok):
    key = issue("--daily-usd-cap", str(cap_usd), *ALLOW, "--label", f"batch-{cap_usd}")
    prepare_ca_bundle(home, monkeypatch)
    (proxy,) = start_proxies(home, slow_stripe, tmp_path, 1)
    try:
        client = client_via_env(proxy.url, key["vault_key"], monkeypatch)
        batch = run_batch(CALLS, lambda i: client.v1.payment_intents.create(params=payment_intent(5000)),
                          workers=WORKERS)
        # The proxy settles after writing each reply: a hold may still be pending at the last answer.
        pending_at_last_answer = count_rows(
            home, "SELECT COUNT(*) FROM reservations WHERE key_id = ? AND state = 'pending'", key["key_id"])
        row = settled_ledger_row(home, key["key_id"])
    finally:
        proxy.stop()
    assert_clean_log(proxy)

    assert_no_surprises(batch)
    succeeded, cap_hits = batch.having(OK), batch.having(CAP_HIT)
    assert len(succeeded) == expected_ok  # floor(cap / $50)
    assert len(cap_hits) == CALLS - expected_ok
    assert all(c.result.status == "succeeded" and c.result.amount == 5000 for c in succeeded)
    assert slow_stripe.hits == expected_ok  # refused calls never reached the vendor
    assert slow_stripe.money_moved_minor == expected_ok * 5000
    assert row["spent_micros"] == expected_ok * 50 * MICROS_PER_USD
    assert row["day_spent_micros"] == expected_ok * 50 * MICROS_PER_USD
    assert (row["reserved_micros"], row["day_reserved_micros"]) == (0, 0)
    audit_rows = count_rows(home, "SELECT COUNT(*) FROM audit WHERE key_id = ?", key["key_id"])
    assert audit_rows == CALLS
    assert count_rows(home, "SELECT COUNT(*) FROM audit WHERE key_id = ? AND decision = 'allowed'",
                      key["key_id"]) == expected_ok
    states = count_rows(home, "SELECT COUNT(*) FROM reservations WHERE key_id = ? AND state = 'settled'",
                        key["key_id"])
    assert states == expected_ok
    shown = keybrake_json(home, "keys", "show", key["key_id"])
    assert (shown["spent_usd"], shown["reserved_usd"]) == (f"{expected_ok * 50}.00", "0.00")
    assert shown["remaining_usd"] == f"{cap_usd - expected_ok * 50}.00"

    figures.record(f"batch 500 x $50, daily cap ${cap_usd}", succeeded=len(succeeded), cap_hits=len(cap_hits),
                   fake_hits=slow_stripe.hits, spent_usd=shown["spent_usd"], reserved_usd=shown["reserved_usd"],
                   audit_rows=audit_rows, pending_at_last_answer=pending_at_last_answer,
                   wall_s=round(batch.wall_s, 2), req_per_s=round(batch.req_per_s, 1))


AMOUNTS = (1999, 2500, 4999, 7300, 12000)  # cents


def test_mixed_amounts_never_sampled_over_the_cap(home, issue, tmp_path, monkeypatch, figures, slow_stripe):
    cap_micros = 500 * MICROS_PER_USD
    key = issue("--daily-usd-cap", "500", *ALLOW, "--label", "batch-mixed")
    rng = random.Random(20260501)
    amounts = [rng.choice(AMOUNTS) for _ in range(CALLS)]
    prepare_ca_bundle(home, monkeypatch)

    samples: list[tuple[int, int]] = []  # (spent + reserved, day_spent + day_reserved)
    stop = threading.Event()
    sampler_errors: list[BaseException] = []

    def sample() -> None:
        # A separate read connection: WAL lets it read while the proxy writes. Each SELECT outside a
        # transaction reads one committed snapshot of the row, so each sample is consistent.
        db = sqlite3.connect(home / "keybrake.db", timeout=30)
        try:
            deadline = time.monotonic() + 120  # bounded even if the batch hangs
            while not stop.is_set() and time.monotonic() < deadline:
                row = db.execute("SELECT spent_micros + reserved_micros, day_spent_micros + day_reserved_micros "
                                 "FROM vault_keys WHERE key_id = ?", (key["key_id"],)).fetchone()
                samples.append((row[0], row[1]))
                time.sleep(0.005)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            sampler_errors.append(error)
        finally:
            db.close()

    (proxy,) = start_proxies(home, slow_stripe, tmp_path, 1)
    sampler = threading.Thread(target=sample, name="ledger-sampler", daemon=True)
    try:
        client = client_via_env(proxy.url, key["vault_key"], monkeypatch)
        sampler.start()
        batch = run_batch(CALLS, lambda i: client.v1.payment_intents.create(params=payment_intent(amounts[i])),
                          workers=WORKERS)
        row = settled_ledger_row(home, key["key_id"])
    finally:
        stop.set()
        sampler.join(timeout=30)
        proxy.stop()
    assert_clean_log(proxy)

    assert not sampler_errors, sampler_errors
    assert_no_surprises(batch)
    succeeded, refused = batch.having(OK), batch.having(CAP_HIT)
    assert len(succeeded) + len(refused) == CALLS
    charged_cents = sum(amounts[c.index] for c in succeeded)
    assert [c.result.amount for c in succeeded] == [amounts[c.index] for c in succeeded]
    assert slow_stripe.money_moved_minor == charged_cents
    assert sum(int(r.form["amount"]) for r in slow_stripe.received) == charged_cents
    assert slow_stripe.hits == len(succeeded)

    spent = row["spent_micros"]
    assert spent == charged_cents * MICROS_PER_CENT
    assert spent <= cap_micros
    assert (row["reserved_micros"], row["day_reserved_micros"]) == (0, 0)
    assert row["day_spent_micros"] == spent

    assert len(samples) > 10, "the sampler barely ran"
    assert all(total <= cap_micros and day <= cap_micros for total, day in samples), max(samples)
    # Every call here settles at exactly what it reserved (the PaymentIntent's amount) and nothing is
    # released (no declines, no vendor errors), so exposure = spent + reserved never goes down.
    totals = [total for total, _ in samples]
    assert all(a <= b for a, b in zip(totals, totals[1:])), "exposure went down without any release"
    # Greedy admission: because exposure only grows here, the headroom a refused call saw was at
    # least the final headroom; it was refused because it did not fit, so no refused amount fits
    # in the final headroom. (This does NOT hold in general: with declines or 5xx a hold can be
    # released after a call was refused, leaving room the refused call would now fit in.)
    headroom = cap_micros - spent
    refused_amounts = sorted({amounts[c.index] for c in refused})
    if refused:
        assert headroom < min(refused_amounts) * MICROS_PER_CENT, (usd(headroom), refused_amounts)

    figures.record("batch 500 mixed amounts, daily cap $500", samples=len(samples),
                   distinct_exposures_sampled=len(set(totals)),
                   max_sampled_exposure_usd=usd(max(totals)), spent_usd=usd(spent), headroom_usd=usd(headroom),
                   succeeded=len(succeeded), refused=len(refused),
                   smallest_refused_usd=usd(refused_amounts[0] * MICROS_PER_CENT) if refused else None,
                   wall_s=round(batch.wall_s, 2), req_per_s=round(batch.req_per_s, 1))


@pytest.mark.parametrize("proxies", [2, 4])
def test_several_proxy_processes_share_one_exact_cap(home, issue, tmp_path, monkeypatch, figures, slow_stripe,
                                                     proxies):
    key = issue("--daily-usd-cap", "500", *ALLOW, "--label", f"batch-{proxies}-proxies")
    prepare_ca_bundle(home, monkeypatch)  # the CA bundle is global to stripe-python, and the same for all
    procs = start_proxies(home, slow_stripe, tmp_path, proxies)
    try:
        clients = [client_via_param(proc.url, key["vault_key"]) for proc in procs]
        # Lane i % proxies runs call i on threads of its own, so each thread talks to one proxy only.
        batch = run_batch(CALLS, lambda i: clients[i % proxies].v1.payment_intents.create(params=payment_intent(5000)),
                          workers=WORKERS - WORKERS % proxies, lanes=proxies)
        row = settled_ledger_row(home, key["key_id"])
        alive = [proc.process.poll() is None for proc in procs]
    finally:
        for proc in procs:
            proc.stop()
    assert_clean_log(*procs)

    assert all(alive), "a proxy process died during the batch"
    assert_no_surprises(batch)
    succeeded, cap_hits = batch.having(OK), batch.having(CAP_HIT)
    assert len(succeeded) == 10
    assert len(cap_hits) == CALLS - 10
    assert slow_stripe.hits == 10
    assert slow_stripe.money_moved_minor == 10 * 5000
    assert row["spent_micros"] == 500 * MICROS_PER_USD
    assert (row["reserved_micros"], row["day_reserved_micros"]) == (0, 0)
    assert count_rows(home, "SELECT COUNT(*) FROM audit WHERE key_id = ?", key["key_id"]) == CALLS
    # Every proxy really took part: each answered some calls (and the run ids show in the ledger).
    per_proxy_ok = [sum(1 for c in succeeded if c.lane == lane) for lane in range(proxies)]
    runs = count_rows(home, "SELECT COUNT(DISTINCT run_id) FROM reservations WHERE key_id = ?", key["key_id"])
    shown = keybrake_json(home, "keys", "show", key["key_id"])
    assert (shown["spent_usd"], shown["reserved_usd"]) == ("500.00", "0.00")

    figures.record(f"batch 500 x $50 over {proxies} proxy processes, daily cap $500", succeeded=len(succeeded),
                   cap_hits=len(cap_hits), fake_hits=slow_stripe.hits, spent_usd=shown["spent_usd"],
                   reserved_usd=shown["reserved_usd"], ok_per_proxy=per_proxy_ok, proxies_that_admitted=runs,
                   wall_s=round(batch.wall_s, 2), req_per_s=round(batch.req_per_s, 1))
