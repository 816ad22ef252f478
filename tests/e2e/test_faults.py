"""Vendor faults: money that may have moved stays counted until a retry tells the truth."""

import pytest
import stripe

from keybrake_addon.fakes.fake_stripe import FakeStripe
from keybrake_addon.proxy_process import ProxyProcess

from .helpers import REAL_SECRET, keybrake, keybrake_json

PI = {"amount": 5000, "currency": "usd", "confirm": True, "payment_method": "pm_card_visa"}


@pytest.fixture(params=["fail_after_charge_rate", "drop_after_charge_rate"])
def faulty_proxy(request, home, tmp_path, monkeypatch):
    with FakeStripe(secret=REAL_SECRET, **{request.param: 1.0}) as fake:
        running = ProxyProcess(home=home, upstreams=(f"stripe={fake.url}",), log_path=tmp_path / "p.log").start()
        monkeypatch.setenv("HTTPS_PROXY", running.url)
        monkeypatch.setattr(stripe, "ca_bundle_path", str(home / "certs" / "keybrake-ca-bundle.pem"))
        yield fake
        running.stop()


def test_lost_answer_stays_counted_then_a_retry_settles_it_once(faulty_proxy, issue, home):
    fake = faulty_proxy
    key = issue("--total-usd-cap", "120", "--allow", "POST /v1/payment_intents")

    with pytest.raises((stripe.APIError, stripe.APIConnectionError)):
        stripe.StripeClient(key["vault_key"], max_network_retries=0).v1.payment_intents.create(
            params=PI, options={"idempotency_key": "order-1"})
    assert fake.money_moved_minor == 5000  # the vendor charged, but the client never heard
    shown = keybrake_json(home, "keys", "show", key["key_id"])
    assert (shown["spent_usd"], shown["reserved_usd"], shown["unknown_usd"]) == ("0.00", "50.00", "50.00")
    assert [r["state"] for r in shown["open_reservations"]] == ["unknown"]

    # The SDK's retry with the same Idempotency-Key gets the vendor's replay and settles the hold.
    retried = stripe.StripeClient(key["vault_key"], max_network_retries=0).v1.payment_intents.create(
        params=PI, options={"idempotency_key": "order-1"})
    assert retried.last_response.headers.get("idempotent-replayed") == "true"
    shown = keybrake_json(home, "keys", "show", key["key_id"])
    assert (shown["spent_usd"], shown["reserved_usd"]) == ("50.00", "0.00")
    assert fake.money_moved_minor == 5000


def test_sdk_retries_count_each_charge_once(faulty_proxy, issue, home):
    fake = faulty_proxy
    key = issue("--total-usd-cap", "1000", "--allow", "POST /v1/payment_intents")
    client = stripe.StripeClient(key["vault_key"], max_network_retries=2)
    for _ in range(3):
        client.v1.payment_intents.create(params=PI)  # each first attempt fails after charging
    shown = keybrake_json(home, "keys", "show", key["key_id"])
    assert fake.money_moved_minor == 3 * 5000
    assert (shown["spent_usd"], shown["reserved_usd"], shown["calls"]) == ("150.00", "0.00", 3)


def test_an_unknown_outcome_can_be_settled_by_hand(faulty_proxy, issue, home):
    key = issue("--total-usd-cap", "120", "--allow", "POST /v1/payment_intents")
    with pytest.raises((stripe.APIError, stripe.APIConnectionError)):
        stripe.StripeClient(key["vault_key"], max_network_retries=0).v1.payment_intents.create(params=PI)
    (hold,) = keybrake_json(home, "keys", "show", key["key_id"])["open_reservations"]
    assert hold["state"] == "unknown"

    keybrake(home, "reconcile", "--reservation", str(hold["id"]), "--actual-usd", "50")
    shown = keybrake_json(home, "keys", "show", key["key_id"])
    assert (shown["spent_usd"], shown["reserved_usd"], shown["open_reservations"]) == ("50.00", "0.00", [])
    again = keybrake(home, "reconcile", "--reservation", str(hold["id"]), "--release", check=False)
    assert again.returncode == 1 and "already settled" in again.stderr
