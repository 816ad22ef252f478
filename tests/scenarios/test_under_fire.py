"""Revocation and expiry while a 500-call batch is under way.

The batch is paced (call i starts no earlier than i * PACE_S), so calls keep starting before and
after the event. Each call's start time is read on the client just before the SDK call; the
proxy reads its own clock later than that, when the request arrives. So a call that *started*
after the revoke returned (or after the key expired) must be refused; calls that started before
may go either way. And conversely, no call may be refused for a revoke that had not begun yet.
"""

import time
from datetime import datetime

import httpx
import pytest

from e2e.helpers import REAL_SECRET, keybrake, keybrake_json
from keybrake_addon.fakes.fake_stripe import FakeStripe
from keybrake_addon.proxy_process import ProxyProcess

from .load import (
    EXPIRED,
    MICROS_PER_USD,
    OK,
    REVOKED,
    Background,
    Completion,
    assert_clean_log,
    client_via_env,
    count_rows,
    ledger_row,
    payment_intent,
    prepare_ca_bundle,
    settled_ledger_row,
)

CALLS = 500
WORKERS = 50
PACE_S = 0.012  # 500 calls start over ~6 s
LATENCY_S = 0.05
ALLOW = ("--allow", "POST /v1/payment_intents")
NEVER_HIT_CAP = ("--total-usd-cap", "100000")  # 500 x $50 = $25,000
# The test reads time.time() before the SDK call and the proxy reads its own clock later, on the
# same machine, so no slack is needed in principle; 50 ms covers clock-read granularity (and
# sub-millisecond ordering of the two reads), not network time. It only ever widens "either way".
CLOCK_MARGIN_S = 0.05


@pytest.fixture
def slow_stripe():
    with FakeStripe(secret=REAL_SECRET, latency_s=LATENCY_S) as fake:
        yield fake


def assert_money_matches(fake, home, key_id, succeeded: int) -> None:
    assert fake.hits == succeeded  # a refused call never reaches the vendor
    assert fake.money_moved_minor == succeeded * 5000
    row = settled_ledger_row(home, key_id)
    assert row["spent_micros"] == succeeded * 50 * MICROS_PER_USD
    assert row["reserved_micros"] == 0
    assert count_rows(home, "SELECT COUNT(*) FROM audit WHERE key_id = ?", key_id) == CALLS


@pytest.mark.parametrize("how", ["cli", "api"])
def test_revoke_under_fire_lets_nothing_through_after_it_returns(home, issue, tmp_path, monkeypatch, figures,
                                                                 slow_stripe, how):
    key = issue(*NEVER_HIT_CAP, *ALLOW, "--label", f"fire-revoke-{how}")
    token = keybrake_json(home, "admin-token", "create", "--name", "scenario")["token"] if how == "api" else None
    prepare_ca_bundle(home, monkeypatch)
    proxy = ProxyProcess(home=home, upstreams=(f"stripe={slow_stripe.url}",), log_path=tmp_path / "proxy.log",
                         extra_args=("--api-port", "0")).start(timeout_s=60)
    try:
        assert proxy.api_url
        client = client_via_env(proxy.url, key["vault_key"], monkeypatch)
        progress = Completion()
        background = Background(CALLS, lambda i: client.v1.payment_intents.create(params=payment_intent(5000)),
                                workers=WORKERS, pace_s=PACE_S, on_done=progress.done).start()
        done_at_revoke = progress.wait_for(int(CALLS * 0.4), timeout_s=120)

        revoke_began = time.monotonic()
        if how == "cli":
            keybrake(home, "revoke", key["key_id"])
        else:
            with httpx.Client(trust_env=False, timeout=30) as api:
                answer = api.delete(f"{proxy.api_url}/vault/keys/{key['key_id']}",
                                    headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"revoked": [key["key_id"]]}
        t_revoked = time.monotonic()

        batch = background.join()
        assert_money_matches(slow_stripe, home, key["key_id"], len(batch.having(OK)))
        revoked_at = ledger_row(home, key["key_id"])["revoked_at"]
    finally:
        proxy.stop()
    assert_clean_log(proxy)

    assert revoked_at is not None
    assert set(batch.counts) <= {OK, REVOKED}, batch.counts
    before = [c for c in batch.calls if c.started <= t_revoked]
    after = [c for c in batch.calls if c.started > t_revoked]
    slipped = [c for c in after if c.outcome != REVOKED]
    assert len(after) >= 20, f"only {len(after)} calls started after the revoke: the scenario tested little"
    assert not slipped, f"{len(slipped)} calls started after the revoke returned and were not refused: " + \
        ", ".join(f"#{c.index} +{(c.started - t_revoked) * 1000:.1f} ms {c.outcome}" for c in slipped[:5])
    # The other direction: nothing was refused as revoked before the revoke even began.
    early = [c for c in batch.having(REVOKED) if c.finished < revoke_began]
    assert not early, f"{len(early)} calls were refused as revoked before the revoke began"

    figures.record(f"revoke under fire ({how})", done_at_revoke=done_at_revoke,
                   calls_started_before_revoke_returned=len(before), calls_started_after=len(after),
                   slipped_through=len(slipped), succeeded=len(batch.having(OK)),
                   refused_revoked=len(batch.having(REVOKED)),
                   refused_among_started_before=sum(1 for c in before if c.outcome == REVOKED),
                   revoke_latency_ms=round((t_revoked - revoke_began) * 1000, 1),
                   fake_hits=slow_stripe.hits, wall_s=round(batch.wall_s, 2))


def test_expiry_under_fire_refuses_every_call_after_expires_at(home, issue, tmp_path, monkeypatch, figures,
                                                               slow_stripe):
    prepare_ca_bundle(home, monkeypatch)
    # The proxy first (it takes a second or two to start), then the key: its 3 s must fall inside the batch.
    proxy = ProxyProcess(home=home, upstreams=(f"stripe={slow_stripe.url}",),
                         log_path=tmp_path / "proxy.log").start(timeout_s=60)
    try:
        key = issue(*NEVER_HIT_CAP, *ALLOW, "--expires-in", "3s", "--label", "fire-expiry")
        client = client_via_env(proxy.url, key["vault_key"], monkeypatch)
        batch = Background(CALLS, lambda i: client.v1.payment_intents.create(params=payment_intent(5000)),
                           workers=WORKERS, pace_s=PACE_S).start().join()
        assert_money_matches(slow_stripe, home, key["key_id"], len(batch.having(OK)))
        stored = ledger_row(home, key["key_id"])["expires_at"]
    finally:
        proxy.stop()
    assert_clean_log(proxy)

    # `issue --json` shows expires_at to the second (truncated); the ledger holds it to the
    # microsecond, and that is what the proxy compares with. Judge the calls by the exact one.
    shown = datetime.fromisoformat(key["expires_at"].replace("Z", "+00:00")).timestamp()
    expires_at = datetime.fromisoformat(stored).timestamp()
    assert shown <= expires_at < shown + 1, (key["expires_at"], stored)

    assert set(batch.counts) <= {OK, EXPIRED}, batch.counts
    after = [c for c in batch.calls if c.started_wall > expires_at + CLOCK_MARGIN_S]
    slipped = [c for c in after if c.outcome != EXPIRED]
    assert len(after) >= 20, f"only {len(after)} calls started after the expiry: the scenario tested little"
    assert batch.having(OK), "no call succeeded before the expiry: the scenario tested little"
    assert not slipped, f"{len(slipped)} calls started after expires_at and were not refused: " + \
        ", ".join(f"#{c.index} +{(c.started_wall - expires_at) * 1000:.1f} ms {c.outcome}" for c in slipped[:5])
    # The other direction: the key was not cut off early.
    early = [c for c in batch.having(EXPIRED) if c.finished_wall < expires_at - CLOCK_MARGIN_S]
    assert not early, f"{len(early)} calls were refused as expired before expires_at"
    # What a client trusting the displayed (truncated) expires_at would see: calls that succeeded
    # although they started after the shown time. Not a cap breach; recorded as a finding.
    ok_after_shown = [c for c in batch.having(OK) if c.started_wall > shown + CLOCK_MARGIN_S]
    last_ok = max((c.started_wall for c in batch.having(OK)), default=expires_at)

    figures.record("expiry under fire (--expires-in 3s)", calls_started_before_expiry=CALLS - len(after),
                   calls_started_after=len(after), slipped_through=len(slipped), succeeded=len(batch.having(OK)),
                   refused_expired=len(batch.having(EXPIRED)),
                   last_ok_start_vs_expiry_ms=round((last_ok - expires_at) * 1000, 1),
                   shown_expires_at=key["expires_at"], stored_expires_at=stored,
                   ok_after_shown_expires_at=len(ok_after_shown), wall_s=round(batch.wall_s, 2))
