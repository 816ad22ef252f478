"""Budgets end to end: real proxy process, official stripe SDK, fake Stripe upstream.

Two keys spend from one child budget under a capped parent. The call that would take the
parent over its cap gets Stripe's 429 (stripe.RateLimitError) naming the budget; a freeze
refuses the next call like a revoked key.
"""

import json

import pytest
import stripe

from .helpers import keybrake, keybrake_json

BOTH_BACKENDS = True

PI = {"amount": 5000, "currency": "usd", "confirm": True, "payment_method": "pm_card_visa"}  # $50


def test_a_budget_cap_is_a_429_naming_the_budget_and_the_figures_add_up(proxy, fake_stripe, stripe_client_for,
                                                                         home):
    keybrake_json(home, "budget", "create", "agents", "--total-usd-cap", "120")
    keybrake_json(home, "budget", "create", "billing", "--parent", "agents")
    first, second = (keybrake_json(home, "issue", "--vendor", "stripe", "--budget", "billing",
                                   "--allow", "POST /v1/payment_intents") for _ in range(2))
    a, b = stripe_client_for(first["vault_key"]), stripe_client_for(second["vault_key"])
    a.v1.payment_intents.create(params=PI)
    a.v1.payment_intents.create(params=PI)

    with pytest.raises(stripe.RateLimitError) as refused:
        b.v1.payment_intents.create(params=PI)  # $150 > $120
    error = refused.value
    assert error.http_status == 429
    assert error.headers["x-keybrake-cap-hit"] == "true"
    assert error.headers["x-keybrake-cap"] == "budget:agents"
    assert error.json_body["error"]["code"] == "keybrake_cap_exceeded"
    assert "budget agents" in error.user_message and "total cap $120.00" in error.user_message
    b.v1.payment_intents.create(params={**PI, "amount": 2000})  # exactly $120
    assert fake_stripe.hits == 3 and fake_stripe.money_moved_minor == 12000

    agents = keybrake_json(home, "budget", "show", "agents")
    assert (agents["spent_usd"], agents["reserved_usd"], agents["remaining_usd"], agents["calls"]) == (
        "120.00", "0.00", "0.00", 3)
    billing = keybrake_json(home, "budget", "show", "billing")
    assert (billing["spent_usd"], billing["remaining_usd"], billing["keys"]) == (
        "120.00", "0.00", [first["key_id"], second["key_id"]])
    spend = json.loads(keybrake(home, "spend", "--by", "budget", "--format", "json").stdout)
    assert [(row["budget"], row["spent_usd"], row["allowed"], row["cap_hits"]) for row in spend] == [
        ("agents", "120.00", 3, 1), ("billing", "120.00", 3, 1)]

    keybrake(home, "budget", "freeze", "agents")
    with pytest.raises(stripe.AuthenticationError) as frozen:
        a.v1.payment_intents.create(params={**PI, "amount": 0})
    assert frozen.value.json_body["error"]["code"] == "keybrake_budget_frozen"
    assert fake_stripe.hits == 3


def test_the_remaining_balance_header_counts_the_budgets_headroom(proxy, stripe_client_for, home):
    """A key with a $500 cap in a $120 budget may spend $70 more after a $50 charge, not $450."""
    keybrake_json(home, "budget", "create", "tight", "--total-usd-cap", "120")
    key = keybrake_json(home, "issue", "--vendor", "stripe", "--budget", "tight", "--total-usd-cap", "500",
                        "--allow", "POST /v1/payment_intents")
    uncapped = keybrake_json(home, "issue", "--vendor", "stripe", "--budget", "tight", "--no-cap",
                             "--allow", "POST /v1/payment_intents")
    intent = stripe_client_for(key["vault_key"]).v1.payment_intents.create(params=PI)
    assert intent.last_response.headers["x-keybrake-remaining-usd"] == "70.00"
    intent = stripe_client_for(uncapped["vault_key"]).v1.payment_intents.create(params=PI)
    assert intent.last_response.headers["x-keybrake-remaining-usd"] == "20.00"  # no key cap: the budget's
    roomy = keybrake_json(home, "issue", "--vendor", "stripe", "--total-usd-cap", "500",
                          "--allow", "POST /v1/payment_intents")  # no budget: the key's own
    intent = stripe_client_for(roomy["vault_key"]).v1.payment_intents.create(params=PI)
    assert intent.last_response.headers["x-keybrake-remaining-usd"] == "450.00"
