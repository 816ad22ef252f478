"""Stripe vendor module: cost estimates, credentials, outcomes and refusal rendering."""

import base64
import json
from decimal import ROUND_CEILING, Decimal

import pytest

from keybrake_addon.vendors import stripe
from keybrake_addon.vendors.base import (
    CostEstimate,
    MalformedRequest,
    OtherAccount,
    Outcome,
    PresentedCredential,
    PricingBasis,
    Refusal,
    RefusalKind,
    Unpriced,
    UnknownCurrency,
    VendorRequest,
    VendorResponse,
)
from keybrake_addon.vendors.currency import DEFAULT_USD_RATES

RATES = DEFAULT_USD_RATES


FORM = {"content-type": "application/x-www-form-urlencoded"}


def req(method: str, path: str, body: bytes = b"", headers: dict | None = None, query: str = "") -> VendorRequest:
    """A request as the SDKs send it: a POST's parameters in a form body."""
    if headers is None:
        headers = FORM if method == "POST" else {}
    return VendorRequest(method=method, path=path, query=query, headers=headers, body=body)


def resp(status: int, body, headers: dict | None = None) -> VendorResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return VendorResponse(status=status, headers=headers or {}, body=raw)


def live_key() -> str:
    return "sk_" + "live_" + "x" * 24


# --- estimates: money-moving creates -------------------------------------------------------

def test_payment_intent_create_usd():
    got = stripe.estimate(req("POST", "/v1/payment_intents", b"amount=5000&currency=usd"), RATES)
    assert got == CostEstimate(usd_micros=50_000_000, basis=PricingBasis.FIXED, object_ref=None,
                               amount_minor=5000, currency="usd")


def test_payment_intent_create_with_confirm_true_costs_the_same():
    got = stripe.estimate(
        req("POST", "/v1/payment_intents", b"amount=5000&currency=usd&confirm=true&payment_method=pm_card_visa"),
        RATES)
    assert got.usd_micros == 50_000_000
    assert got.basis is PricingBasis.FIXED


def test_currency_code_is_lowercased_in_estimate():
    got = stripe.estimate(req("POST", "/v1/payment_intents", b"amount=5000&currency=USD"), RATES)
    assert (got.usd_micros, got.currency) == (50_000_000, "usd")


@pytest.mark.parametrize(
    "path, body, usd_micros, amount_minor, currency",
    [
        ("/v1/charges", b"amount=1234&currency=usd&source=tok_visa", 12_340_000, 1234, "usd"),
        ("/v1/transfers", b"amount=100&currency=gbp&destination=acct_1", 1_360_000, 100, "gbp"),  # 1.00 * 1.36
        ("/v1/payouts", b"amount=250&currency=cad", 1_850_000, 250, "cad"),  # 2.50 * 0.74
        ("/v1/payment_intents", b"amount=2000&currency=eur", 23_600_000, 2000, "eur"),  # 20 * 1.18
    ],
)
def test_fixed_amount_endpoints(path, body, usd_micros, amount_minor, currency):
    got = stripe.estimate(req("POST", path, body), RATES)
    assert got == CostEstimate(usd_micros=usd_micros, amount_minor=amount_minor, currency=currency)


def test_zero_decimal_jpy_uses_default_rate_with_ceiling():
    got = stripe.estimate(req("POST", "/v1/payment_intents", b"amount=1000&currency=jpy"), RATES)
    # JPY has no minor unit: 1000 is 1000 yen, at 0.0070 USD/yen = $7.00.
    expected = int((Decimal(1000) * DEFAULT_USD_RATES["JPY"] * 1_000_000).to_integral_value(ROUND_CEILING))
    assert expected == 7_000_000
    assert got.usd_micros == expected
    assert (got.amount_minor, got.currency) == (1000, "jpy")


def test_three_decimal_kwd():
    got = stripe.estimate(req("POST", "/v1/payment_intents", b"amount=1000&currency=kwd"), RATES)
    # 1000 fils = 1 KWD = $3.30
    assert got.usd_micros == 3_300_000


def test_custom_rate_is_used_and_rounded_up():
    rates = {"USD": Decimal("1"), "EUR": Decimal("1.0000001")}
    got = stripe.estimate(req("POST", "/v1/payment_intents", b"amount=1&currency=eur"), rates)
    # 0.01 EUR * 1.0000001 = 0.010000001 USD = 10000.001 micros -> 10001
    assert got.usd_micros == 10_001


# --- estimates: checkout sessions -------------------------------------------------------------

ESCAPED_CHECKOUT = (
    b"line_items%5B0%5D%5Bprice_data%5D%5Bunit_amount%5D=1000"
    b"&line_items%5B0%5D%5Bprice_data%5D%5Bcurrency%5D=usd"
    b"&line_items%5B0%5D%5Bquantity%5D=3"
)
RAW_CHECKOUT = (
    b"line_items[0][price_data][unit_amount]=1000"
    b"&line_items[0][price_data][currency]=usd"
    b"&line_items[0][quantity]=3"
)


@pytest.mark.parametrize("body", [ESCAPED_CHECKOUT, RAW_CHECKOUT], ids=["escaped", "raw"])
def test_checkout_line_items_escaped_or_raw_brackets(body):
    got = stripe.estimate(req("POST", "/v1/checkout/sessions", b"mode=payment&" + body), RATES)
    assert got == CostEstimate(usd_micros=30_000_000, amount_minor=3000, currency="usd")


def test_checkout_quantity_defaults_to_one_and_mixed_currencies_sum_in_usd():
    body = (RAW_CHECKOUT
            + b"&line_items[1][price_data][unit_amount]=500"
            + b"&line_items[1][price_data][currency]=eur"
            + b"&line_items[1][price_data][product_data][name]=Widget")
    got = stripe.estimate(req("POST", "/v1/checkout/sessions", body), RATES)
    # $30.00 + 5.00 EUR * 1.18 = $35.90; no single currency, so no minor total.
    assert got == CostEstimate(usd_micros=35_900_000, amount_minor=None, currency=None)


def test_checkout_without_line_items_is_free():
    got = stripe.estimate(req("POST", "/v1/checkout/sessions", b"mode=setup&currency=usd"), RATES)
    assert got == CostEstimate()


def test_checkout_with_saved_price_is_unpriced():
    body = b"line_items[0][price]=price_123&line_items[0][quantity]=1"
    with pytest.raises(Unpriced):
        stripe.estimate(req("POST", "/v1/checkout/sessions", body), RATES)


def test_checkout_line_item_without_currency_is_malformed():
    body = b"line_items[0][price_data][unit_amount]=1000&line_items[0][quantity]=1"
    with pytest.raises(MalformedRequest):
        stripe.estimate(req("POST", "/v1/checkout/sessions", body), RATES)


# --- estimates: confirm, capture, refunds ------------------------------------------------------

@pytest.mark.parametrize(
    "path, object_ref",
    [
        ("/v1/payment_intents/pi_3Abc123/confirm", "pi_3Abc123"),
        ("/v1/payment_intents/pi_3Abc123/capture", "pi_3Abc123"),
        ("/v1/charges/ch_9Z/capture", "ch_9Z"),
    ],
)
def test_confirm_and_capture_are_already_counted(path, object_ref):
    got = stripe.estimate(req("POST", path, b"payment_method=pm_card_visa"), RATES)
    assert got == CostEstimate(usd_micros=0, basis=PricingBasis.ALREADY_COUNTED, object_ref=object_ref)


def test_refund_with_amount_and_currency_is_fixed():
    got = stripe.estimate(req("POST", "/v1/refunds", b"charge=ch_1&amount=2000&currency=eur"), RATES)
    assert got == CostEstimate(usd_micros=23_600_000, basis=PricingBasis.FIXED, amount_minor=2000, currency="eur")


def test_refund_with_amount_without_currency_is_counted_amount():
    got = stripe.estimate(req("POST", "/v1/refunds", b"payment_intent=pi_1&amount=500"), RATES)
    assert got == CostEstimate(usd_micros=0, basis=PricingBasis.COUNTED_AMOUNT, object_ref="pi_1",
                               amount_minor=500, currency=None)


@pytest.mark.parametrize(
    "body, object_ref",
    [
        (b"charge=ch_42", "ch_42"),
        (b"payment_intent=pi_42", "pi_42"),
        (b"payment_intent=pi_42&charge=ch_42", "pi_42"),  # the payment intent is preferred
    ],
)
def test_refund_without_amount_is_counted_amount_of_target(body, object_ref):
    got = stripe.estimate(req("POST", "/v1/refunds", body), RATES)
    assert got == CostEstimate(basis=PricingBasis.COUNTED_AMOUNT, object_ref=object_ref)


def test_refund_without_target_is_malformed():
    with pytest.raises(MalformedRequest):
        stripe.estimate(req("POST", "/v1/refunds", b"amount=100&currency=usd"), RATES)


# --- estimates: free, unpriced, malformed -----------------------------------------------------

@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_reads_cost_zero(method):
    # Even with a body that would price a POST.
    got = stripe.estimate(req(method, "/v1/payment_intents", b"amount=5000&currency=usd"), RATES)
    assert got == CostEstimate(usd_micros=0, basis=PricingBasis.FIXED)


@pytest.mark.parametrize("path, query", [
    ("/v1/customers/cus_1", ""),
    ("/v1/subscriptions/sub_1", ""),
    ("/v1/subscriptions/sub_1", "invoice_now=false&prorate=true"),
    ("/v1/subscriptions/sub_1", "invoice_now=False"),
    ("/v1/subscription_items/si_1", "proration_behavior=create_prorations"),
    ("/v1/subscription_items/si_1", "proration_behavior=none&clear_usage=true"),
    ("/v1/customers/cus_1/subscriptions/sub_1", "prorate=true"),
])
def test_a_delete_that_invoices_nothing_costs_zero(path, query):
    assert stripe.estimate(req("DELETE", path, query=query), RATES) == CostEstimate(usd_micros=0,
                                                                                 basis=PricingBasis.FIXED)


@pytest.mark.parametrize("path, query", [
    ("/v1/subscriptions/sub_1", "invoice_now=true"),
    ("/v1/subscriptions/sub_1", "invoice_now=1"),
    ("/v1/subscriptions/sub_1", "invoice_now="),
    ("/v1/subscriptions/sub_1", "invoice_now=false&invoice_now=true"),
    ("/v1/subscriptions/sub_1", "Invoice_Now=true"),
    ("/v1/customers/cus_1/subscriptions/sub_1", "invoice_now=true"),
    ("/v1/subscription_items/si_1", "proration_behavior=always_invoice"),
    # spelled otherwise, a path may still reach a subscription: the query is read on every DELETE
    ("/v1/subscriptions/sub_1/", "invoice_now=true"),
    ("/v1/Subscriptions/sub_1", "invoice_now=true"),
    ("/v1/subscription%73/sub_1", "invoice_now=true"),
    ("/v1/subscription_items/si_1/", "proration_behavior=always_invoice"),
    ("/v1/invoiceitems/ii_1", "invoice_now=true"),
])
def test_a_delete_that_invoices_at_once_is_refused(path, query):
    with pytest.raises(Unpriced, match="at once"):
        stripe.estimate(req("DELETE", path, query=query), RATES)


@pytest.mark.parametrize("query", ["expand[]=x;invoice_now=true", "a=1%3Binvoice_now=true"])
def test_a_delete_query_with_a_semicolon_is_refused(query):
    with pytest.raises(MalformedRequest, match="';'"):
        stripe.estimate(req("DELETE", "/v1/subscriptions/sub_1", query=query), RATES)


def test_a_delete_with_a_body_is_refused():
    # The SDKs send a DELETE's parameters in its query string; a body is a second place to read.
    with pytest.raises(MalformedRequest, match="query string"):
        stripe.estimate(req("DELETE", "/v1/subscriptions/sub_1", b"invoice_now=true"), RATES)


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/customers", b"email=a%40example.com"),
        ("/v1/customers/cus_123", b"name=Jane"),
        ("/v1/payment_methods/pm_1/attach", b"customer=cus_1"),
        ("/v1/setup_intents", b"customer=cus_1"),
        ("/v1/payment_intents/pi_1/cancel", b""),
        ("/v1/refunds/re_1/cancel", b""),
        ("/v1/checkout/sessions/cs_1/expire", b""),
    ],
)
def test_posts_that_move_no_money_cost_zero(path, body):
    assert stripe.estimate(req("POST", path, body), RATES) == CostEstimate()


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("POST", "/v1/issuing/cards", b"cardholder=ich_1&currency=usd&type=virtual"),
        ("POST", "/v1/subscriptions", b"customer=cus_1&items[0][price]=price_1"),
        ("POST", "/v1/invoices/in_1/pay", b""),
        ("POST", "/v1/payment_intents/pi_1/increment_authorization", b"amount=100"),
        ("POST", "/v1/payment_intents/", b"amount=5000&currency=usd"),  # trailing slash: not a known route
        ("PUT", "/v1/customers/cus_1", b""),
        ("PATCH", "/v1/customers/cus_1", b""),
    ],
)
def test_unknown_or_unpriced_endpoints_raise_unpriced(method, path, body):
    with pytest.raises(Unpriced):
        stripe.estimate(req(method, path, body), RATES)


def test_payment_intent_update_with_amount_is_unpriced():
    with pytest.raises(Unpriced):
        stripe.estimate(req("POST", "/v1/payment_intents/pi_1", b"amount=9000"), RATES)


def test_payment_intent_update_without_amount_costs_zero():
    got = stripe.estimate(req("POST", "/v1/payment_intents/pi_1", b"description=hello&metadata[order]=7"), RATES)
    assert got == CostEstimate()


def test_payment_intent_update_changing_currency_is_not_free():
    # A PaymentIntent created for 10,000,000 VND ($400 at 0.000040) and then updated to
    # currency=usd keeps amount=10000000, i.e. becomes $100,000. An update that changes the
    # currency changes the value as much as one that changes the amount, so it must not be free.
    with pytest.raises(Unpriced):
        stripe.estimate(req("POST", "/v1/payment_intents/pi_1", b"currency=usd"), RATES)


OVERCAPTURE = b"payment_method_options[card][request_overcapture]"


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/payment_intents", b"amount=5000&currency=usd&capture_method=manual&" + OVERCAPTURE + b"=if_available"),
        ("/v1/payment_intents", b"amount=5000&currency=usd&"
                                b"payment_method_options%5Bcard%5D%5Brequest_overcapture%5D=if_available"),
        ("/v1/payment_intents", b"amount=5000&currency=usd&"
                                b"Payment_Method_Options[Card][Request_OverCapture]=if_available"),
        ("/v1/payment_intents", b"amount=5000&currency=usd&payment_method_options[card][request%5Fovercapture]=x"),
        # every repeat is read, whichever one Stripe keeps
        ("/v1/payment_intents", b"amount=5000&currency=usd&" + OVERCAPTURE + b"=if_available&" + OVERCAPTURE
                                + b"=never"),
        ("/v1/payment_intents", b"amount=5000&currency=usd&" + OVERCAPTURE + b"="),
        ("/v1/payment_intents/pi_1", OVERCAPTURE + b"=if_available"),  # update: otherwise free
        ("/v1/payment_intents/pi_1/confirm", OVERCAPTURE + b"=if_available"),  # otherwise already counted
        ("/v1/checkout/sessions", b"mode=payment&line_items[0][price_data][unit_amount]=1000"
                                  b"&line_items[0][price_data][currency]=usd&" + OVERCAPTURE + b"=if_available"),
    ],
)
def test_a_post_requesting_overcapture_is_refused(path, body):
    # A capture is priced as already counted at the authorised amount; over-capture would take more.
    with pytest.raises(Unpriced, match="over-capture"):
        stripe.estimate(req("POST", path, body), RATES)


@pytest.mark.parametrize(
    "options",
    [
        OVERCAPTURE + b"=never",
        b"payment_method_options[card][request_incremental_authorization]=if_available",
        b"payment_method_options[card][request_extended_authorization]=if_available",
        b"payment_method_options[card][request_multicapture]=if_available",
        b"payment_method_options[card_present][request_incremental_authorization_support]=true",
        b"payment_method_options[card_present][request_extended_authorization]=true",
    ],
)
def test_other_authorisation_options_and_overcapture_never_are_priced_as_before(options):
    # An increment is a call of its own to /increment_authorization, refused as unpriced.
    plain = stripe.estimate(req("POST", "/v1/payment_intents", b"amount=5000&currency=usd&capture_method=manual"),
                            RATES)
    got = stripe.estimate(req("POST", "/v1/payment_intents",
                              b"amount=5000&currency=usd&capture_method=manual&" + options), RATES)
    assert got == plain == CostEstimate(usd_micros=50_000_000, amount_minor=5000, currency="usd")
    assert stripe.estimate(req("POST", "/v1/payment_intents/pi_1/confirm", options), RATES).basis \
        is PricingBasis.ALREADY_COUNTED


@pytest.mark.parametrize(
    "body",
    [
        b"currency=usd",  # no amount
        b"amount=&currency=usd",  # empty amount
        b"amount=5000",  # no currency
        b"amount=-1&currency=usd",  # negative
        b"amount=50.5&currency=usd",  # not whole
        b"amount=abc&currency=usd",
    ],
)
def test_malformed_amounts(body):
    with pytest.raises(MalformedRequest):
        stripe.estimate(req("POST", "/v1/payment_intents", body), RATES)


def test_unknown_currency_raises_unknown_currency():
    with pytest.raises(UnknownCurrency) as info:
        stripe.estimate(req("POST", "/v1/payment_intents", b"amount=100&currency=xyz"), RATES)
    assert "XYZ" in str(info.value)
    assert isinstance(info.value, Unpriced)


# --- credentials -------------------------------------------------------------------------------

def basic(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"authorization": "Bearer sk_kb_abc"}, PresentedCredential(token="sk_kb_abc")),
        ({"authorization": "bearer   sk_kb_abc  "}, PresentedCredential(token="sk_kb_abc")),
        ({"authorization": basic(b"sk_kb_abc:")}, PresentedCredential(token="sk_kb_abc")),
        ({"authorization": basic(b"sk_kb_abc:ignored")}, PresentedCredential(token="sk_kb_abc")),
        ({"authorization": "Basic !!!not-base64!!!"}, None),
        ({"authorization": basic(b":password-only")}, None),
        ({"authorization": basic(b"\xff\xfe:")}, None),  # not UTF-8
        ({"authorization": "Bearer "}, None),
        ({"authorization": "Token sk_kb_abc"}, None),
        ({}, None),
    ],
    ids=["bearer", "bearer-lower-spaces", "basic", "basic-with-password", "garbage-basic",
         "basic-empty-user", "basic-not-utf8", "bearer-empty", "other-scheme", "missing"],
)
def test_presented_credential(headers, expected):
    assert stripe.presented_credential(headers) == expected


@pytest.mark.parametrize(
    "token, expected",
    [
        ("sk_" + "live_" + "x" * 24, True),
        ("sk_" + "test_" + "x" * 24, True),
        ("rk_" + "live_" + "x" * 24, True),
        ("rk_" + "test_" + "x" * 24, True),
        ("sk_kb_" + "a" * 43, False),
        ("pk_" + "live_" + "x" * 24, False),
        ("", False),
    ],
)
def test_looks_like_real_secret(token, expected):
    assert stripe.looks_like_real_secret(token) is expected


def test_authorization_header_and_idempotency_key():
    assert stripe.authorization_header(live_key()) == "Bearer " + live_key()
    assert stripe.idempotency_key({"idempotency-key": "abc"}) == "abc"
    assert stripe.idempotency_key({"idempotency-key": ""}) is None
    assert stripe.idempotency_key({}) is None


# --- outcomes ----------------------------------------------------------------------------------

PI_CREATE = req("POST", "/v1/payment_intents", b"amount=5000&currency=usd")


def test_outcome_2xx_payment_intent():
    got = stripe.outcome(PI_CREATE, resp(200, {"id": "pi_123", "object": "payment_intent", "amount": 5000,
                                                "currency": "usd"}, {"request-id": "req_abc"}), RATES)
    assert got == Outcome(usd_micros=50_000_000, object_ids=("pi_123",), amount_minor=5000, currency="usd",
                          replayed=False, vendor_request_id="req_abc")


@pytest.mark.parametrize("value, replayed", [("true", True), ("True", True), ("false", False)])
def test_outcome_idempotent_replayed_header(value, replayed):
    got = stripe.outcome(PI_CREATE, resp(200, {"id": "pi_1", "amount": 100, "currency": "usd"},
                                         {"idempotent-replayed": value}), RATES)
    assert got.replayed is replayed
    assert got.usd_micros == 1_000_000


def test_outcome_402_card_error_extracts_payment_intent_id():
    body = {"error": {"type": "card_error", "code": "card_declined",
                      "payment_intent": {"id": "pi_declined", "object": "payment_intent", "amount": 5000}}}
    got = stripe.outcome(PI_CREATE, resp(402, body, {"request-id": "req_9"}), RATES)
    assert got == Outcome(usd_micros=None, object_ids=("pi_declined",), vendor_request_id="req_9")


def test_outcome_402_with_charge_id_string():
    body = {"error": {"type": "card_error", "charge": "ch_77"}}
    got = stripe.outcome(req("POST", "/v1/charges"), resp(402, body), RATES)
    assert got.object_ids == ("ch_77",)
    assert got.usd_micros is None


def test_outcome_non_json_body():
    got = stripe.outcome(PI_CREATE, resp(200, b"<html>502 Bad Gateway</html>",
                                         {"request-id": "req_x", "idempotent-replayed": "true"}), RATES)
    assert got == Outcome(usd_micros=None, object_ids=(), replayed=True, vendor_request_id="req_x")


def test_outcome_2xx_without_amount_says_nothing():
    got = stripe.outcome(PI_CREATE, resp(200, {"id": "pi_5"}), RATES)
    assert got == Outcome(usd_micros=None, object_ids=("pi_5",))


def test_outcome_2xx_unknown_currency_keeps_amount_but_no_usd():
    got = stripe.outcome(PI_CREATE, resp(200, {"id": "pi_5", "amount": 100, "currency": "xyz"}), RATES)
    assert got == Outcome(usd_micros=None, object_ids=("pi_5",), amount_minor=100, currency="xyz")


def test_outcome_free_endpoint_and_get_are_zero():
    got = stripe.outcome(req("POST", "/v1/customers"), resp(200, {"id": "cus_1"}), RATES)
    assert got == Outcome(usd_micros=0, object_ids=("cus_1",))
    got = stripe.outcome(req("GET", "/v1/payment_intents/pi_1"),
                         resp(200, {"id": "pi_1", "amount": 5000, "currency": "usd"}), RATES)
    assert got.usd_micros == 0


def test_outcome_checkout_uses_amount_total():
    got = stripe.outcome(req("POST", "/v1/checkout/sessions"),
                         resp(200, {"id": "cs_1", "amount_total": 3000, "currency": "usd"}), RATES)
    assert (got.usd_micros, got.amount_minor, got.object_ids) == (30_000_000, 3000, ("cs_1",))


# --- refusals ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, code", [
    (RefusalKind.CAP_EXCEEDED, "keybrake_cap_exceeded"),
    (RefusalKind.MAX_CALLS_EXCEEDED, "keybrake_max_calls_exceeded"),
])
def test_render_cap_hit(kind, code):
    got = stripe.render_refusal(Refusal(kind, "Keybrake cap reached"))
    assert got.status == 429
    assert got.headers == {
        "content-type": "application/json",
        "stripe-should-retry": "false",
        "x-keybrake-refusal": code,
        "x-keybrake-cap-hit": "true",
    }
    assert json.loads(got.body) == {"error": {"type": "invalid_request_error", "code": code,
                                              "message": "Keybrake cap reached"}}


def test_render_not_allowed_has_no_cap_hit_header():
    got = stripe.render_refusal(Refusal(RefusalKind.NOT_ALLOWED, "no"))
    assert got.status == 403
    assert "x-keybrake-cap-hit" not in got.headers
    assert got.headers["stripe-should-retry"] == "false"
    assert json.loads(got.body)["error"]["code"] == "keybrake_endpoint_not_allowed"


def test_render_unavailable():
    got = stripe.render_refusal(Refusal(RefusalKind.UNAVAILABLE, "ledger locked", retry_after_s=5))
    assert got.status == 503
    assert got.headers["retry-after"] == "5"
    assert got.headers["stripe-should-retry"] == "true"
    assert "x-keybrake-cap-hit" not in got.headers
    assert json.loads(got.body) == {"error": {"type": "api_error", "code": "keybrake_unavailable",
                                              "message": "ledger locked"}}




def test_checkout_line_items_in_an_unknown_form_are_unpriced_not_free():
    body = b"line_items[][price_data][unit_amount]=1000&line_items[][price_data][currency]=usd"
    with pytest.raises(Unpriced):
        stripe.estimate(req("POST", "/v1/checkout/sessions", body), DEFAULT_USD_RATES)


# --- what the estimate reads must be all Stripe reads -----------------------------------------

@pytest.mark.parametrize(
    "path, body, query",
    [
        # Stripe merges these into the body: each would be a priced call estimated at $0 or less.
        ("/v1/payment_intents/pi_1", b"", "amount=500000"),
        ("/v1/payment_intents/pi_1", b"description=x", "currency=vnd"),
        ("/v1/checkout/sessions", b"mode=payment", "line_items[0][price_data][unit_amount]=900000"
                                                   "&line_items[0][price_data][currency]=usd"),
        ("/v1/payment_intents", b"amount=100&currency=usd", "amount=900000"),
        ("/v1/refunds", b"charge=ch_1&amount=100&currency=usd", "amount=900000"),
        ("/v1/customers", b"", "email=a%40example.com"),  # free, but refused alike: no endpoint is special
        ("/v1/payment_intents/pi_1/cancel", b"", "x"),
    ],
)
def test_post_query_parameters_are_refused_on_every_endpoint(path, body, query):
    with pytest.raises(MalformedRequest, match="query parameters"):
        stripe.estimate(req("POST", path, body, query=query), RATES)


def test_get_query_parameters_stay_free():
    assert stripe.estimate(req("GET", "/v1/charges", query="limit=3"), RATES) == CostEstimate()


@pytest.mark.parametrize(
    "path, body, content_type",
    [
        ("/v1/payment_intents", b'{"amount": 500000, "currency": "usd"}', "application/json"),
        ("/v1/payment_intents/pi_1", b'{"amount": 500000}', "application/json"),  # an update: "free" today
        ("/v1/customers", b'{"email": "a@example.com"}', "application/json"),
        ("/v1/payment_intents", b"amount=100&currency=usd", None),
        ("/v1/payment_intents", b"amount=100&currency=usd", "text/plain"),
        ("/v1/payment_intents", b"amount=100&currency=usd", "multipart/form-data; boundary=x"),
    ],
)
def test_a_post_body_that_is_not_a_form_is_refused(path, body, content_type):
    headers = {"content-type": content_type} if content_type else {}
    with pytest.raises(MalformedRequest, match="application/x-www-form-urlencoded"):
        stripe.estimate(req("POST", path, body, headers=headers), RATES)


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded",
                                          "Application/X-WWW-Form-Urlencoded; charset=utf-8"])
def test_form_bodies_are_priced_whatever_the_case_and_charset(content_type):
    got = stripe.estimate(req("POST", "/v1/payment_intents", b"amount=5000&currency=usd",
                              headers={"content-type": content_type}), RATES)
    assert got.usd_micros == 50_000_000


def test_an_empty_body_needs_no_content_type():
    # Nothing for Stripe to read, nothing for Keybrake to price beyond the path itself.
    got = stripe.estimate(req("POST", "/v1/payment_intents/pi_1/confirm", headers={}), RATES)
    assert got.basis is PricingBasis.ALREADY_COUNTED


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/v1/payment_intents", b"amount=5000&currency=usd"),
    ("POST", "/v1/customers", b"email=a%40example.com"),
    ("GET", "/v1/balance", b""),
    ("DELETE", "/v1/customers/cus_1", b""),
])
def test_the_connected_account_is_read_from_stripe_account_for_every_call(method, path, body):
    """The ledger compares it with the key's own (tests/unit/test_decisions.py); pricing ignores it."""
    headers = {**(FORM if method == "POST" else {}), "stripe-account": "acct_1Connected"}
    assert stripe.connected_account(req(method, path, body, headers=headers)) == "acct_1Connected"
    assert stripe.estimate(req(method, path, body, headers=headers), RATES) == \
        stripe.estimate(req(method, path, body, headers=FORM if method == "POST" else {}), RATES)
    assert stripe.connected_account(req(method, path, body, headers={"stripe-account": ""})) == ""  # sent, empty
    assert stripe.connected_account(req(method, path, body)) is None


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/v1/payment_intents", b"amount=5000&currency=usd"),
    ("GET", "/v1/balance", b""),
])
@pytest.mark.parametrize("context", ["acct_1Connected", "acct_1Platform/acct_1Connected", ""])
def test_stripe_context_is_refused_for_every_call(method, path, body, context):
    """Stripe-Context supersedes Stripe-Account and can name any account of a platform or an organisation."""
    headers = {**(FORM if method == "POST" else {}), "stripe-context": context}
    with pytest.raises(OtherAccount, match="Stripe-Context"):
        stripe.estimate(req(method, path, body, headers=headers), RATES)


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/payment_intents", b"amount=5000&currency=usd&capture_method=manual&payment_method_types[]=card_present"),
        ("/v1/payment_intents", b"amount=5000&currency=usd&payment_method_types[0]=card&"
                                b"payment_method_types[1]=Card_Present"),
        ("/v1/payment_intents", b"amount=5000&currency=cad&payment_method_types%5B%5D=interac_present"),
        ("/v1/payment_intents/pi_1", b"payment_method_types[]=card_present"),  # update: otherwise free
        ("/v1/payment_intents", b"amount=5000&currency=usd&payment_method_data[type]=card_present"),
    ],
)
def test_an_in_person_payment_intent_is_refused(path, body):
    """A Terminal (card_present) PaymentIntent in the US may be captured for more than it
    authorised, to add an on-receipt tip, with no parameter asking for it beforehand."""
    with pytest.raises(Unpriced, match="in-person"):
        stripe.estimate(req("POST", path, body), RATES)


def test_online_payment_method_types_are_priced_as_before():
    got = stripe.estimate(req("POST", "/v1/payment_intents", b"amount=5000&currency=usd&payment_method_types[]=card"
                                                              b"&payment_method_types[]=us_bank_account"), RATES)
    assert got.usd_micros == 50 * 1_000_000
