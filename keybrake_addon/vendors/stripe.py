"""Stripe (api.stripe.com): credential, cost estimate, outcome and refusal shape.

Pure functions only. Amounts come from the request where Stripe takes them, and from the
response for settlement.

Facts about Stripe's API this relies on (Stripe's API reference; stripe-python and stripe-node):
- The key travels as `Authorization: Bearer sk_...` (both SDKs), or as the Basic-auth user with
  an empty password. Real keys start sk_live_, sk_test_, rk_live_ or rk_test_.
- Request bodies are `application/x-www-form-urlencoded`, nested keys bracketed
  (`line_items[0][price_data][unit_amount]`): stripe-python sends the brackets raw, other
  clients escaped. The SDKs put parameters in the query string for GET and DELETE only; Stripe
  also reads the query parameters of a POST, as if they were in its body.
- Amounts are integers in the currency's smallest unit (see currency.py).
- `Stripe-Account: acct_...` makes the call act for a Connect connected account (stripe-python's
  `stripe_account=`, stripe-node's `stripeAccount`). Account ids are `acct_` and letters and digits.
  `Stripe-Context` (newer SDKs' `stripe_context`) supersedes it and can also name accounts of an
  organisation, as a path of account ids (https://docs.stripe.com/context).
- `Idempotency-Key` (both SDKs send one on every POST): a replay returns the saved answer with
  `Idempotent-Replayed: true` and moves no money again.
- SDKs obey `Stripe-Should-Retry` before their own rules, and otherwise retry 409 and 5xx.
- A DELETE can move money: cancelling a subscription with `invoice_now=true` issues its final
  invoice (un-invoiced metered usage, pending prorations) and collects it at once, and deleting a
  subscription item with `proration_behavior=always_invoice` invoices the proration at once.
"""

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from .base import (
    CostEstimate,
    MalformedRequest,
    OtherAccount,
    Outcome,
    PresentedCredential,
    PricingBasis,
    Refusal,
    RefusalKind,
    RenderedResponse,
    Unpriced,
    VendorRequest,
    VendorResponse,
)
from .currency import minor_to_usd_micros
from .auth_headers import basic_credentials, bearer, bearer_token
from .forms import parse_form_pairs, parse_json_object

NAME = "stripe"
HOSTS = ("api.stripe.com",)
_REAL_SECRET_PREFIXES = ("sk_live_", "sk_test_", "rk_live_", "rk_test_")
CONNECTED_ACCOUNT_ID = re.compile(r"acct_[A-Za-z0-9]{1,64}")

UsdRates = Mapping[str, Decimal]


def presented_credential(headers: Mapping[str, str]) -> PresentedCredential | None:
    """Stripe takes the key as a Bearer token, or as the Basic-auth user with no password."""
    if token := bearer_token(headers):
        return PresentedCredential(token=token)
    basic_auth = basic_credentials(headers)
    return PresentedCredential(token=basic_auth[0]) if basic_auth and basic_auth[0] else None


def looks_like_real_secret(token: str) -> bool:
    return token.startswith(_REAL_SECRET_PREFIXES)


def authorization_header(secret: str, auth_user: str | None = None) -> str:
    return bearer(secret)


def account_ref(request: VendorRequest) -> str | None:
    """Stripe keys are per account and the path names none (Connect's Stripe-Account: connected_account)."""
    return None


def connected_account(request: VendorRequest) -> str | None:
    """The connected account a Stripe-Account header makes the call act for, as sent (empty too);
    None without the header. The ledger compares it with the key's own (policy.py)."""
    return request.headers.get("stripe-account")


def idempotency_key(headers: Mapping[str, str]) -> str | None:
    return headers.get("idempotency-key") or None


# --- estimates -------------------------------------------------------------------------------

def _int_param(form: Mapping[str, str], name: str, *, required: bool) -> int | None:
    raw = form.get(name)
    if raw is None or raw == "":
        if required:
            raise MalformedRequest(f"the parameter {name!r} is required to price this call")
        return None
    try:
        value = int(raw)
    except ValueError:
        raise MalformedRequest(f"the parameter {name!r} must be a whole number, got {raw!r}") from None
    if value < 0:
        raise MalformedRequest(f"the parameter {name!r} must not be negative")
    return value


def _amount_in_currency(form: Mapping[str, str], rates: UsdRates, *, amount_param: str = "amount") -> CostEstimate:
    amount = _int_param(form, amount_param, required=True)
    currency = form.get("currency")
    if not currency:
        raise MalformedRequest("the parameter 'currency' is required to price this call")
    return CostEstimate(
        usd_micros=minor_to_usd_micros(amount, currency, rates),
        amount_minor=amount,
        currency=currency.lower(),
    )


def _fixed(form, match, rates) -> CostEstimate:
    return _amount_in_currency(form, rates)


def _free(form, match, rates) -> CostEstimate:
    return CostEstimate()


def _already_counted(form, match, rates) -> CostEstimate:
    # Confirming or capturing moves money the creation was already counted for.
    return CostEstimate(basis=PricingBasis.ALREADY_COUNTED, object_ref=match["id"])


def _payment_intent_update(form, match, rates) -> CostEstimate:
    # A new currency re-values the same amount (10,000,000 VND is not 10,000,000 USD cents).
    if "amount" in form or "currency" in form:
        raise Unpriced("changing a PaymentIntent's amount or currency is not priced by Keybrake yet")
    return CostEstimate()


def _refund(form, match, rates) -> CostEstimate:
    target = form.get("payment_intent") or form.get("charge")
    if not target:
        raise MalformedRequest("a refund needs 'charge' or 'payment_intent'")
    amount = _int_param(form, "amount", required=False)
    if amount is None:
        # The whole remaining amount: at most what the ledger counted for that object.
        return CostEstimate(basis=PricingBasis.COUNTED_AMOUNT, object_ref=target)
    currency = form.get("currency")
    if not currency:
        # A partial refund is in the charge's currency, which the request does not name.
        return CostEstimate(basis=PricingBasis.COUNTED_AMOUNT, object_ref=target, amount_minor=amount)
    return CostEstimate(
        usd_micros=minor_to_usd_micros(amount, currency, rates),
        amount_minor=amount,
        currency=currency.lower(),
    )


_LINE_ITEM = re.compile(r"^line_items\[(\d+)\]\[(.+)\]$")


def _checkout_session(form, match, rates) -> CostEstimate:
    items: dict[str, dict[str, str]] = {}
    for name, value in form.items():
        if found := _LINE_ITEM.match(name):
            items.setdefault(found[1], {})[found[2]] = value
        elif name.startswith("line_items"):
            raise Unpriced(f"checkout line items written as {name!r} are not understood")
    if not items:
        return CostEstimate()  # a setup- or subscription-mode session without line items
    total_usd = 0
    total_minor = 0
    currencies = set()
    for item in items.values():
        if "price_data][unit_amount" not in item:
            raise Unpriced("checkout line items that use a saved price id are not priced yet")
        unit = _int_param(item, "price_data][unit_amount", required=True)
        quantity = _int_param(item, "quantity", required=False) or 1
        currency = item.get("price_data][currency")
        if not currency:
            raise MalformedRequest("a checkout line item's price_data needs a currency")
        total_usd += minor_to_usd_micros(unit * quantity, currency, rates)
        total_minor += unit * quantity
        currencies.add(currency.lower())
    return CostEstimate(
        usd_micros=total_usd,
        amount_minor=total_minor if len(currencies) == 1 else None,
        currency=currencies.pop() if len(currencies) == 1 else None,
    )


def _unpriced(why: str) -> Callable:
    def refuse(form, match, rates) -> CostEstimate:
        raise Unpriced(why)

    return refuse


@dataclass(frozen=True)
class _Route:
    pattern: re.Pattern[str]
    estimate: Callable[[Mapping[str, str], re.Match[str], UsdRates], CostEstimate]
    response_amount_field: str | None = None


def _route(path: str, estimate, response_amount_field: str | None = None) -> _Route:
    pattern = re.compile("^" + path.replace("{id}", r"(?P<id>[A-Za-z0-9_]+)") + "$")
    return _Route(pattern, estimate, response_amount_field)


# POST routes, first match wins. A POST that matches none of them is unpriced.
_POST_ROUTES: tuple[_Route, ...] = (
    _route("/v1/payment_intents", _fixed, "amount"),
    _route("/v1/payment_intents/{id}/confirm", _already_counted, "amount"),
    _route("/v1/payment_intents/{id}/capture", _already_counted, "amount"),
    _route("/v1/payment_intents/{id}/cancel", _free),
    _route("/v1/payment_intents/{id}/increment_authorization",
           _unpriced("incrementing an authorisation is not priced by Keybrake yet")),
    _route("/v1/payment_intents/{id}", _payment_intent_update),
    _route("/v1/charges", _fixed, "amount"),
    _route("/v1/charges/{id}/capture", _already_counted, "amount"),
    _route("/v1/charges/{id}", _free),
    _route("/v1/refunds", _refund, "amount"),
    _route("/v1/refunds/{id}/cancel", _free),
    _route("/v1/refunds/{id}", _free),
    _route("/v1/transfers", _fixed, "amount"),
    _route("/v1/payouts", _fixed, "amount"),
    _route("/v1/payouts/{id}/cancel", _free),
    _route("/v1/checkout/sessions", _checkout_session, "amount_total"),
    _route("/v1/checkout/sessions/{id}/expire", _free),
    _route("/v1/invoices/{id}/pay", _unpriced("paying an invoice is not priced by Keybrake yet")),
    _route("/v1/subscriptions", _unpriced("subscriptions are not priced by Keybrake yet")),
    # Objects that hold no money of their own.
    *(
        _route(path, _free)
        for resource in ("customers", "payment_methods", "setup_intents", "products", "prices",
                         "webhook_endpoints", "tokens", "coupons", "tax_rates")
        for path in (f"/v1/{resource}", f"/v1/{resource}/{{id}}",
                     f"/v1/{resource}/{{id}}/attach", f"/v1/{resource}/{{id}}/detach",
                     f"/v1/{resource}/{{id}}/confirm", f"/v1/{resource}/{{id}}/cancel")
    ),
)

_READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


def _check_delete(request: VendorRequest) -> None:
    """A DELETE is free unless it asks Stripe to invoice at once (see the module's facts).

    Read on every path, not only the subscription ones: a path spelled otherwise (a trailing
    slash, another case, an escaped letter) may still reach them. A `;` would be a second
    separator to a Rack-style query parser."""
    if request.body:
        raise MalformedRequest("a Stripe DELETE takes its parameters in the query string, as the SDKs send them; "
                               "this one has a body")
    if ";" in request.query or "%3b" in request.query.lower():
        raise MalformedRequest("a Stripe DELETE's query string must not hold ';' (a second separator to some parsers)")
    for name, value in parse_form_pairs(request.query.encode()):
        name, value = name.strip().casefold(), value.strip().casefold()
        if name == "invoice_now" and value != "false":
            raise Unpriced("cancelling a subscription with invoice_now issues and collects its final invoice at "
                           "once, an amount Keybrake cannot know beforehand: cancel without it (Stripe's default)")
        if name == "proration_behavior" and value not in ("none", "create_prorations"):
            raise Unpriced("deleting a subscription item with proration_behavior=always_invoice invoices and "
                           "collects the proration at once, an amount Keybrake cannot know beforehand: use "
                           "create_prorations or none")


def _post_route(path: str) -> tuple[_Route, re.Match[str]] | None:
    for route in _POST_ROUTES:
        if match := route.pattern.match(path):
            return route, match
    return None


def estimate(request: VendorRequest, usd_rates: UsdRates) -> CostEstimate:
    """The most this call can move, in USD micros, or why it cannot be told."""
    if "stripe-context" in request.headers:  # before the free reads: they would read another account
        raise OtherAccount("the Stripe-Context header can name any account of the platform or organisation, which "
                           "Keybrake cannot check; a key issued with --stripe-account acts for a connected account "
                           "through Stripe-Account")
    if request.method == "DELETE":
        _check_delete(request)
    if request.method in _READ_ONLY_METHODS:
        return CostEstimate()
    if request.method != "POST":
        raise Unpriced(f"{request.method} is not a method Stripe's API uses")
    _require_plain_form_body(request)
    pairs = parse_form_pairs(request.body)  # every repeat, for the checks; the route reads the last of each
    _refuse_overcapture(pairs)
    _refuse_in_person(pairs)
    found = _post_route(request.path)
    if found is None:
        raise Unpriced(f"POST {request.path} is not an endpoint Keybrake knows the cost of")
    route, match = found
    return route.estimate(dict(pairs), match, usd_rates)


def _require_plain_form_body(request: VendorRequest) -> None:
    """Every POST's parameters must be in a plain form body, the only place the estimate reads.

    Stripe merges a POST's query parameters into its body, so `?amount=500000` would change a
    call priced from the body alone. Refusing them, rather than pricing the union of query and
    body, needs no guess at which one Stripe takes when both name a parameter, and costs real
    clients nothing: the SDKs never send a query string on POST. Likewise a body Keybrake reads
    as an empty form but Stripe might read otherwise (JSON) is refused, whatever the endpoint: even
    a free one, such as a PaymentIntent update, may change an amount. (A compressed body never
    gets here: the gate refuses it for every vendor, body_framing.py.)
    """
    if request.query:
        raise MalformedRequest("Stripe reads a POST's query parameters as body parameters, and Keybrake "
                               "prices the body only: send every parameter in the form body")
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if request.body and media_type != "application/x-www-form-urlencoded":
        sent = f"Content-Type {media_type}" if media_type else "no Content-Type"
        raise MalformedRequest(f"a Stripe body must be application/x-www-form-urlencoded; this one has {sent}")


def _refuse_overcapture(pairs: list[tuple[str, str]]) -> None:
    """Over-capture lets a later capture take more than the authorised amount, and a capture is
    priced as already counted at the creation's amount: the difference would never be counted.

    Read on every POST, since the option can be set when a PaymentIntent is created, updated or
    confirmed, or through a Checkout Session. Every repeat of the parameter is read, whichever one
    Stripe keeps, and the name is matched ignoring case and position, so that no spelling Stripe
    might accept slips past; `never` is Stripe's default and stays allowed.

    Requesting incremental authorisation (`request_incremental_authorization`, card_present's
    `request_incremental_authorization_support`) is left alone: the increment itself is a call to
    /increment_authorization, refused as unpriced. Extended authorisation and multicapture keep the
    authorised amount as the ceiling of what is captured.
    """
    for name, value in pairs:
        if "request_overcapture" in name.casefold() and value != "never":
            raise Unpriced(f"{name[:80]}={value[:20]!r} requests over-capture, which lets a capture take more than the "
                           "authorised amount Keybrake counted: leave it out or send 'never' (Stripe's default)")


_IN_PERSON_TYPES = frozenset({"card_present", "interac_present"})


def _refuse_in_person(pairs: list[tuple[str, str]]) -> None:
    """A Terminal PaymentIntent may be captured above its authorisation with no parameter asking
    for it first (on-receipt tips in the US: up to the greater of 50 % or $50 more), and a capture
    is priced as already counted. Keybrake fronts unattended workers, not card readers: refused."""
    for name, value in pairs:
        if value.strip().casefold() in _IN_PERSON_TYPES and name.strip().casefold().startswith("payment_method"):
            raise Unpriced(f"{name[:60]}={value[:20]!r} makes an in-person (Terminal) payment, which may be captured "
                           "for more than it authorised; Keybrake does not price in-person payments")


# --- outcomes --------------------------------------------------------------------------------

def outcome(request: VendorRequest, response: VendorResponse, usd_rates: UsdRates) -> Outcome:
    """What the response says was spent and on which object."""
    replayed = response.headers.get("idempotent-replayed", "").lower() == "true"
    request_id = response.headers.get("request-id")
    body = parse_json_object(response.body)
    if not isinstance(body, dict):
        return Outcome(usd_micros=None, replayed=replayed, vendor_request_id=request_id)
    if not 200 <= response.status < 300:
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        related = error.get("payment_intent") or error.get("charge")
        object_id = related.get("id") if isinstance(related, dict) else related
        ids = (object_id,) if isinstance(object_id, str) else ()
        return Outcome(usd_micros=None, object_ids=ids, replayed=replayed, vendor_request_id=request_id)
    object_id = body.get("id")
    ids = (object_id,) if isinstance(object_id, str) else ()
    amount_field = None
    if request.method == "POST" and (found := _post_route(request.path)):
        amount_field = found[0].response_amount_field
    if amount_field is None:
        return Outcome(usd_micros=0, object_ids=ids, replayed=replayed, vendor_request_id=request_id)
    amount, currency = body.get(amount_field), body.get("currency")
    if not isinstance(amount, int) or not isinstance(currency, str):
        return Outcome(usd_micros=None, object_ids=ids, replayed=replayed, vendor_request_id=request_id)
    try:
        usd = minor_to_usd_micros(amount, currency, usd_rates)
    except Unpriced:
        usd = None
    return Outcome(
        usd_micros=usd, object_ids=ids, amount_minor=amount, currency=currency.lower(),
        replayed=replayed, vendor_request_id=request_id,
    )


# --- refusals --------------------------------------------------------------------------------

def refusal_status(kind: RefusalKind) -> int:
    """The HTTP status this vendor's refusal answers with (the audit row records the same)."""
    return kind.status


def render_refusal(refusal: Refusal) -> RenderedResponse:
    """A Stripe-shaped error that both SDKs map to their usual exception and do not retry."""
    kind = refusal.kind
    headers = {
        "content-type": "application/json",
        # The SDKs obey this before their own rules: retrying a policy refusal is pointless.
        "stripe-should-retry": "true" if kind.status == 503 else "false",
        "x-keybrake-refusal": kind.code,
    }
    if kind.is_cap_hit:
        headers["x-keybrake-cap-hit"] = "true"
    if refusal.cap is not None:
        headers["x-keybrake-cap"] = refusal.cap
    if refusal.retry_after_s is not None:
        headers["retry-after"] = str(refusal.retry_after_s)
    error_type = "api_error" if kind.status >= 500 else "invalid_request_error"
    body = {"error": {"type": error_type, "code": kind.code, "message": refusal.message}}
    return RenderedResponse(kind.status, headers, json.dumps(body).encode())

