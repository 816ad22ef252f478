"""Stripe Connect per key, end to end: stripe-python's `stripe_account=` through the forward proxy.

A key issued with --stripe-account acts for that connected account only: its calls must carry
that Stripe-Account; one without it (the platform account) or with another is refused, and so is
any Stripe-Account for a key issued without one.
"""

import pytest
import stripe

from keybrake_addon.ledger.base import AuditFilter

from .helpers import keybrake, keybrake_json

CONNECTED, OTHER = "acct_1Connected0Shop", "acct_1Other0Shop"
PI = {"amount": 5000, "currency": "usd", "confirm": True, "payment_method": "pm_card_visa"}


def refusal_of(error: stripe.StripeError) -> tuple[int, str, str]:
    body = error.json_body["error"]
    return error.http_status, body["code"], body["message"]


def test_a_connected_account_key_acts_for_its_account_only(proxy, fake_stripe, stripe_client_for, issue, home,
                                                           ledger_of):
    key = issue("--total-usd-cap", "500", "--allow", "POST /v1/payment_intents", "--stripe-account", CONNECTED)
    assert key["stripe_account"] == CONNECTED
    client = stripe_client_for(key["vault_key"])

    intent = client.v1.payment_intents.create(params=PI, options={"stripe_account": CONNECTED})
    assert intent.status == "succeeded"
    (seen,) = fake_stripe.received
    assert seen.headers["stripe-account"] == CONNECTED  # forwarded as sent

    with pytest.raises(stripe.PermissionError) as without:  # would act for the platform account
        client.v1.payment_intents.create(params=PI)
    status, code, message = refusal_of(without.value)
    assert (status, code) == (403, "keybrake_account_mismatch")
    assert f"Stripe-Account: {CONNECTED}" in message and "no Stripe-Account header" in message
    with pytest.raises(stripe.PermissionError) as other:
        client.v1.payment_intents.create(params=PI, options={"stripe_account": OTHER})
    assert f"not '{OTHER}'" in refusal_of(other.value)[2]
    # The SDK's client-wide option is the same header.
    with pytest.raises(stripe.PermissionError):
        stripe.StripeClient(key["vault_key"], stripe_account=OTHER, max_network_retries=0).v1.payment_intents.create(
            params=PI)
    with pytest.raises(stripe.PermissionError) as context:  # Stripe-Context could name any account
        client.v1.payment_intents.create(params=PI, options={"stripe_account": CONNECTED,
                                                             "stripe_context": f"{CONNECTED}/{OTHER}"})
    assert "Stripe-Context" in refusal_of(context.value)[2]
    assert fake_stripe.hits == 1 and fake_stripe.money_moved_minor == 5000

    shown = keybrake_json(home, "keys", "show", key["key_id"])
    assert (shown["stripe_account"], shown["spent_usd"]) == (CONNECTED, "50.00")
    assert keybrake_json(home, "keys", "list")[0]["stripe_account"] == CONNECTED
    assert CONNECTED in keybrake(home, "keys", "list").stdout
    decisions = [row["decision"] for row in ledger_of().audit_rows(AuditFilter(key_id=key["key_id"]))]
    assert decisions == ["allowed"] + ["keybrake_account_mismatch"] * 4


def test_a_key_without_an_account_refuses_every_stripe_account(proxy, fake_stripe, stripe_client_for, issue):
    key = issue("--total-usd-cap", "500", "--allow", "POST /v1/payment_intents", "--allow", "GET /v1/balance")
    assert key["stripe_account"] is None
    client = stripe_client_for(key["vault_key"])
    with pytest.raises(stripe.PermissionError) as refused:
        client.v1.balance.retrieve(options={"stripe_account": CONNECTED})  # a free read of another account
    status, code, message = refusal_of(refused.value)
    assert (status, code) == (403, "keybrake_account_mismatch") and "acts for no connected account" in message
    with pytest.raises(stripe.PermissionError) as context:
        client.v1.balance.retrieve(options={"stripe_context": CONNECTED})
    assert "Stripe-Context" in refusal_of(context.value)[2]
    assert client.v1.payment_intents.create(params=PI).status == "succeeded"
    assert fake_stripe.hits == 1


def test_issue_refuses_an_account_for_another_vendor_or_of_another_shape(home):
    bad = keybrake(home, "issue", "--vendor", "stripe", "--total-usd-cap", "5", "--allow", "GET /v1/balance",
                   "--stripe-account", "cus_123", check=False)
    assert bad.returncode == 2 and "--stripe-account: expected a Stripe account id" in bad.stderr
