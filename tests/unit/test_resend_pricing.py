"""Resend vendor module: cost estimates, credentials, outcomes and refusal rendering.

Default rate (pricing.ResendRates): $0.0009 per email = 900 micros, where Resend counts every
To, CC and BCC recipient as one email.
"""

import json
from dataclasses import replace
from decimal import Decimal

import pytest
import resend as resend_sdk
from resend.exceptions import (
    ApplicationError,
    InvalidApiKeyError,
    MissingApiKeyError,
    RateLimitError,
    ResendError,
    ValidationError,
    raise_for_code_and_type,
)
from resend.http_client import HTTPClient

from keybrake_addon.pricing import ResendRates
from keybrake_addon.vault.vault_keys import derive_vault_key
from keybrake_addon.vendors import resend
from keybrake_addon.vendors.base import (
    CostEstimate,
    CredentialEndpoint,
    MalformedRequest,
    Outcome,
    PresentedCredential,
    Refusal,
    RefusalKind,
    Unpriced,
    VendorRequest,
    VendorResponse,
)

RATES = ResendRates()
_dumps = json.dumps  # FakeResendHttp.request has a parameter named `json`
VAULT_KEY = derive_vault_key(b"k" * 32, "resend", "kbk_test")
EMAIL_ID = "49a3999c-0ce1-4ea6-ab68-afcd6dc2e794"


def req(method: str, path: str, body=None, headers: dict | None = None) -> VendorRequest:
    raw = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
    return VendorRequest(method=method, path=path, query="", headers=headers or {}, body=raw)


def resp(status: int, body, headers: dict | None = None) -> VendorResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return VendorResponse(status=status, headers=headers or {}, body=raw)


def email(to="a@example.com", **extra) -> dict:
    return {"from": "Acme <onboarding@acme.dev>", "to": to, "subject": "hi", "html": "<p>hi</p>", **extra}


# --- estimates ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "message, usd_micros",
    [
        (email(), 900),
        (email(to=["a@example.com"]), 900),
        (email(to=["a@example.com", "b@example.com"]), 1_800),  # each recipient is an email
        (email(to="a@example.com", cc="c@example.com", bcc=["d@example.com", "e@example.com"]), 3_600),
        (email(to="a@example.com, b@example.com"), 1_800),  # one entry listing two addresses
        (email(to='"Doe, Jane" <jane@example.com>'), 900),  # a comma in a display name is one address
        (email(to="a@example.com", cc=None, bcc=[]), 900),
        (email(scheduled_at="in 1 hour"), 900),  # scheduled: counted when requested
    ],
)
def test_send_email_costs_one_email_per_recipient(message, usd_micros):
    got = resend.estimate(req("POST", "/emails", message), RATES)
    assert got == CostEstimate(usd_micros=usd_micros, currency="usd")


FIFTY = [f"r{i}@example.com" for i in range(50)]


@pytest.mark.parametrize(
    "path, body, key",
    [
        ("/emails", email(CC=FIFTY), "CC"),
        ("/emails", email(Bcc=FIFTY), "Bcc"),
        ("/emails", {"from": "a@acme.dev", "TO": FIFTY, "subject": "hi"}, "TO"),
        ("/emails", email(**{"To": FIFTY}), "To"),  # beside an exact `to`
        ("/emails", email(**{" cc": FIFTY}), " cc"),
        ("/emails/batch", [email(), email(bCC=FIFTY)], "bCC"),
    ],
)
def test_recipient_fields_spelled_in_another_case_are_refused(path, body, key):
    # If Resend matched keys regardless of case, these recipients would be sent but not counted.
    with pytest.raises(MalformedRequest, match="must be spelled exactly") as info:
        resend.estimate(req("POST", path, body), RATES)
    assert repr(key) in str(info.value)


def test_lower_case_recipient_fields_are_priced_as_before_and_other_keys_in_any_case_pass():
    message = email(to=["a@example.com", "b@example.com"], cc="c@example.com", bcc=["d@example.com"],
                    Reply_To=FIFTY, Subject="x")  # reply_to sends nothing, whatever its case
    assert resend.estimate(req("POST", "/emails", message), RATES) == CostEstimate(usd_micros=3_600, currency="usd")


@pytest.mark.parametrize(
    "batch, usd_micros",
    [
        ([email()], 900),
        ([email(), email(to="b@example.com"), email(to="c@example.com")], 2_700),
        ([email(to=["a@example.com", "b@example.com"]), email()], 2_700),
        ([email()] * 100, 90_000),
    ],
)
def test_batch_costs_the_sum_of_its_emails(batch, usd_micros):
    assert resend.estimate(req("POST", "/emails/batch", batch), RATES).usd_micros == usd_micros


def test_rate_is_configurable_and_rounds_up():
    assert resend.estimate(req("POST", "/emails", email()), replace(RATES, usd_per_email=Decimal("0.0000001"))) \
        == CostEstimate(usd_micros=1, currency="usd")  # 0.1 micro rounds up to 1
    three = [email(), email(), email()]
    rates = replace(RATES, usd_per_email=Decimal("0.00065"))
    assert resend.estimate(req("POST", "/emails/batch", three), rates).usd_micros == 1_950


@pytest.mark.parametrize(
    "path, body",
    [
        ("/emails/batch", [email()] * 101),
        ("/emails/batch", []),
        ("/emails/batch", email()),  # an object, not an array
        ("/emails/batch", [email(), "not an email"]),
        ("/emails/batch", b"not json"),
        ("/emails/batch", None),
        ("/emails", [email()]),  # an array where one email goes
        ("/emails", b"{broken"),
        ("/emails", None),
        ("/emails", {"from": "a@acme.dev", "subject": "no recipient"}),
        ("/emails", email(to=[])),
        ("/emails", email(to=42)),
        ("/emails", email(cc=[{"email": "c@example.com"}])),
        ("/emails/batch", [email(), {"from": "a@acme.dev"}]),
    ],
)
def test_malformed_sends(path, body):
    with pytest.raises(MalformedRequest):
        resend.estimate(req("POST", path, body), RATES)


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/emails"),
        ("GET", f"/emails/{EMAIL_ID}"),
        ("HEAD", "/emails"),
        ("DELETE", "/domains/d1"),
        ("POST", f"/emails/{EMAIL_ID}/cancel"),
        ("POST", f"/emails/{EMAIL_ID}/share"),
        ("PATCH", f"/emails/{EMAIL_ID}"),  # reschedule
        ("POST", "/domains"),
        ("POST", "/domains/d1/verify"),
        ("PATCH", "/domains/d1"),
        ("POST", "/audiences"),
        ("POST", "/audiences/aud_1/contacts"),
        ("PATCH", "/audiences/aud_1/contacts/c1"),
        ("POST", "/contacts"),
        ("POST", "/contacts/jane%40example.com/segments/seg_1"),
        ("POST", "/segments"),
        ("POST", "/topics"),
        ("POST", "/webhooks"),
        ("POST", "/templates/t1/publish"),
    ],
)
def test_free_calls(method, path):
    assert resend.estimate(req(method, path, {"name": "x"}), RATES) == CostEstimate()


@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", "/broadcasts/b1/send"),  # sends marketing email
        ("POST", "/broadcasts"),
        ("POST", "/events"),  # may trigger an automation that sends email
        ("POST", "/emails/"),
        ("PUT", "/emails"),
        ("PATCH", "/emails/batch/x"),
    ],
)
def test_other_writes_are_unpriced(method, path):
    with pytest.raises(Unpriced):
        resend.estimate(req(method, path, email()), RATES)


# --- credential endpoints -----------------------------------------------------------------------

@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/api-keys", "/api-keys/", "/api-keys/key_123", "/API-Keys", "/api-keys/a/b"])
def test_api_key_endpoints_are_refused_for_every_method(method, path):
    # Creating a key returns its token, a real Resend key a vault key must never obtain.
    with pytest.raises(CredentialEndpoint):
        resend.estimate(req(method, path, {"name": "worker"}), RATES)


def test_neighbours_of_api_keys_are_unaffected():
    assert resend.estimate(req("GET", "/emails"), RATES) == CostEstimate()
    assert resend.estimate(req("POST", "/domains"), RATES) == CostEstimate()
    assert resend.estimate(req("POST", "/emails", email()), RATES).usd_micros == 900
    with pytest.raises(Unpriced):
        resend.estimate(req("POST", "/api-keysmith", email()), RATES)  # not the API keys resource


# --- credentials -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"authorization": f"Bearer {VAULT_KEY}"}, PresentedCredential(token=VAULT_KEY)),
        ({"authorization": f"bearer  {VAULT_KEY} "}, PresentedCredential(token=VAULT_KEY)),
        ({"authorization": "Bearer something_else"}, PresentedCredential(token="something_else")),
        ({"authorization": "Bearer "}, None),
        ({"authorization": "Basic cmVfa2I6"}, None),
        ({}, None),
    ],
)
def test_presented_credential(headers, expected):
    assert resend.presented_credential(headers) == expected


@pytest.mark.parametrize(
    "token, real",
    [
        ("re_" + "123abc45_" + "X" * 24, True),
        ("re_anything", True),
        (VAULT_KEY, False),
        ("sk_live_x", False),
        ("kb_x", False),
    ],
)
def test_looks_like_real_secret(token, real):
    assert resend.looks_like_real_secret(token) is real


def test_vault_key_shape():
    assert VAULT_KEY.startswith("re_kb_") and len(VAULT_KEY) == 49


def test_authorization_account_and_idempotency():
    assert resend.authorization_header("re_real", None) == "Bearer re_real"
    assert resend.authorization_header("re_real", "ignored") == "Bearer re_real"
    assert resend.account_ref(req("POST", "/emails")) is None
    assert resend.idempotency_key({"idempotency-key": "welcome-user-42"}) == "welcome-user-42"
    assert resend.idempotency_key({"idempotency-key": ""}) is None
    assert resend.idempotency_key({}) is None


# --- outcomes ----------------------------------------------------------------------------------

def test_single_send_outcome_lists_the_id_and_keeps_the_estimate():
    # One id per email, not per recipient: the estimate (which counted recipients) stands.
    got = resend.outcome(req("POST", "/emails"), resp(200, {"id": EMAIL_ID}), RATES)
    assert got == Outcome(usd_micros=None, object_ids=(EMAIL_ID,), replayed=False)


def test_batch_outcome_lists_every_id():
    body = {"data": [{"id": "e1"}, {"id": "e2"}, {"id": "e3"}]}
    assert resend.outcome(req("POST", "/emails/batch"), resp(200, body), RATES) == Outcome(None, ("e1", "e2", "e3"))
    permissive = {"data": [{"id": "e1"}], "errors": [{"index": 1, "message": "invalid `to`"}]}
    assert resend.outcome(req("POST", "/emails/batch"), resp(200, permissive), RATES).object_ids == ("e1",)


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("GET", f"/emails/{EMAIL_ID}", {"object": "email", "id": EMAIL_ID}),
        ("POST", f"/emails/{EMAIL_ID}/cancel", {"object": "email", "id": EMAIL_ID}),
        ("POST", "/domains", {"id": "d1", "name": "acme.dev"}),
    ],
)
def test_free_call_outcomes_cost_nothing(method, path, body):
    assert resend.outcome(req(method, path), resp(200, body), RATES).usd_micros == 0


def test_unpriced_call_forwarded_anyway_keeps_what_was_reserved():
    assert resend.outcome(req("POST", "/broadcasts/b1/send"), resp(200, {"id": "b1"}), RATES) == Outcome(None, ("b1",))


@pytest.mark.parametrize("status", [400, 401, 403, 409, 422, 429, 500])
def test_error_outcomes(status):
    body = {"statusCode": status, "message": "no", "name": "validation_error"}
    assert resend.outcome(req("POST", "/emails"), resp(status, body), RATES) == Outcome(usd_micros=None)


# --- refusals ----------------------------------------------------------------------------------

# (kind, HTTP status, resend name, class resend-python raises, whether the exception keeps our message).
# Resend answers 401 only for a missing key and 403 invalid_api_key for a key it does not accept,
# so Keybrake's other 401 key refusals are rendered as that 403.
REFUSALS = [
    (RefusalKind.MISSING_KEY, 401, "missing_api_key", MissingApiKeyError, False),  # the SDK's own text
    (RefusalKind.UNKNOWN_KEY, 403, "invalid_api_key", InvalidApiKeyError, True),
    (RefusalKind.KEY_EXPIRED, 403, "invalid_api_key", InvalidApiKeyError, True),
    (RefusalKind.KEY_REVOKED, 403, "invalid_api_key", InvalidApiKeyError, True),
    (RefusalKind.BUDGET_FROZEN, 403, "invalid_api_key", InvalidApiKeyError, True),
    (RefusalKind.WRONG_VENDOR, 403, "invalid_api_key", InvalidApiKeyError, True),
    (RefusalKind.REAL_SECRET, 403, "invalid_api_key", InvalidApiKeyError, True),
    (RefusalKind.ACCOUNT_MISMATCH, 403, "invalid_api_key", InvalidApiKeyError, True),
    (RefusalKind.NOT_ALLOWED, 403, "invalid_api_key", InvalidApiKeyError, True),
    (RefusalKind.UNPRICED, 403, "invalid_api_key", InvalidApiKeyError, True),
    (RefusalKind.UNKNOWN_CURRENCY, 403, "invalid_api_key", InvalidApiKeyError, True),
    (RefusalKind.EGRESS_DENIED, 403, "invalid_api_key", InvalidApiKeyError, True),
    (RefusalKind.CREDENTIAL_ENDPOINT, 403, "invalid_api_key", InvalidApiKeyError, True),
    (RefusalKind.INVALID_REQUEST, 400, "validation_error", ValidationError, True),
    (RefusalKind.CAP_EXCEEDED, 429, "rate_limit_exceeded", RateLimitError, True),
    (RefusalKind.MAX_CALLS_EXCEEDED, 429, "rate_limit_exceeded", RateLimitError, True),
    (RefusalKind.UNAVAILABLE, 503, "application_error", ResendError, True),  # the SDK maps only 500
]


def test_every_refusal_kind_is_covered():
    assert {kind for kind, *_ in REFUSALS} == set(RefusalKind)


@pytest.mark.parametrize("kind, status, name, error_class, keeps_message", REFUSALS)
def test_render_refusal_shape(kind, status, name, error_class, keeps_message):
    rendered = resend.render_refusal(Refusal(kind, "Keybrake says no."))
    assert rendered.status == status
    assert json.loads(rendered.body) == {"statusCode": status, "message": "Keybrake says no.", "name": name,
                                         "keybrake_code": kind.code}
    assert rendered.headers["content-type"] == "application/json"
    assert rendered.headers["x-keybrake-refusal"] == kind.code
    assert ("x-keybrake-cap-hit" in rendered.headers) is kind.is_cap_hit


def test_render_refusal_retry_after():
    rendered = resend.render_refusal(Refusal(RefusalKind.CAP_EXCEEDED, "cap", retry_after_s=3600))
    assert rendered.headers["retry-after"] == "3600"
    assert rendered.headers["x-keybrake-cap-hit"] == "true"
    assert "retry-after" not in resend.render_refusal(Refusal(RefusalKind.NOT_ALLOWED, "no")).headers


@pytest.mark.parametrize("kind, status, name, error_class, keeps_message", REFUSALS)
def test_resend_sdk_error_factory_raises_its_usual_class(kind, status, name, error_class, keeps_message):
    """resend-python's request.perform calls raise_for_code_and_type(status, body name, body message)."""
    rendered = resend.render_refusal(Refusal(kind, "Keybrake cap reached for vault key kbk_1."))
    body = json.loads(rendered.body)
    with pytest.raises(ResendError) as raised:
        raise_for_code_and_type(code=rendered.status, error_type=body["name"], message=body["message"],
                                headers=rendered.headers)
    assert type(raised.value) is error_class
    assert raised.value.code == status
    assert raised.value.error_type == name
    assert (raised.value.message == "Keybrake cap reached for vault key kbk_1.") is keeps_message
    assert raised.value.headers["x-keybrake-refusal"] == kind.code


def test_application_error_would_be_raised_for_a_500():
    # Documents why 503 gives the base class: the SDK's table has an entry for 500 only.
    with pytest.raises(ApplicationError):
        raise_for_code_and_type(code=500, error_type="application_error", message="x")


class FakeResendHttp(HTTPClient):
    """resend-python's HTTP seam: records what the SDK sends and answers with a canned response."""

    def __init__(self, status: int, body: bytes, headers: dict) -> None:
        self.answer = (body, status, headers)
        self.sent: list[VendorRequest] = []

    def request(self, method, url, headers, json=None, files=None, data=None):  # noqa: A002 (the SDK's name)
        path = url.removeprefix(resend_sdk.api_url)
        self.sent.append(VendorRequest(method.upper(), path, "", {k.lower(): v for k, v in headers.items()},
                                       _dumps(json).encode()))
        return self.answer


@pytest.fixture
def sdk(monkeypatch):
    def install(status: int, body: bytes, headers: dict) -> FakeResendHttp:
        http = FakeResendHttp(status, body, headers)
        monkeypatch.setattr(resend_sdk, "default_http_client", http)
        monkeypatch.setattr(resend_sdk, "api_key", VAULT_KEY)
        return http
    return install


def test_resend_sdk_request_is_read_and_a_cap_refusal_raises_rate_limit_error(sdk):
    rendered = resend.render_refusal(Refusal(RefusalKind.CAP_EXCEEDED, "Keybrake cap reached.", retry_after_s=60))
    http = sdk(rendered.status, rendered.body, rendered.headers)
    with pytest.raises(RateLimitError) as raised:
        resend_sdk.Emails.send({"from": "a@acme.dev", "to": ["x@example.com", "y@example.com"], "subject": "s",
                                "html": "h"}, {"idempotency_key": "welcome-42"})
    assert raised.value.message == "Keybrake cap reached."
    assert raised.value.headers["retry-after"] == "60"
    sent = http.sent[0]
    assert (sent.method, sent.path) == ("POST", "/emails")
    assert resend.presented_credential(sent.headers) == PresentedCredential(VAULT_KEY)
    assert resend.idempotency_key(sent.headers) == "welcome-42"
    assert resend.estimate(sent, RATES).usd_micros == 1_800  # two recipients


def test_resend_sdk_batch_and_its_outcome(sdk):
    answer = json.dumps({"data": [{"id": "e1"}, {"id": "e2"}]}).encode()
    http = sdk(200, answer, {"content-type": "application/json"})
    sent = resend_sdk.Batch.send([email(to="x@example.com"), email(to="y@example.com")])
    assert [item["id"] for item in sent["data"]] == ["e1", "e2"]
    request = http.sent[0]
    assert request.path == "/emails/batch"
    assert resend.estimate(request, RATES).usd_micros == 1_800
    assert resend.outcome(request, resp(200, answer), RATES).object_ids == ("e1", "e2")


@pytest.mark.parametrize("kind, status", [(RefusalKind.UNKNOWN_KEY, 403), (RefusalKind.KEY_REVOKED, 403),
                                          (RefusalKind.UNPRICED, 403), (RefusalKind.INVALID_REQUEST, 400),
                                          (RefusalKind.UNAVAILABLE, 503)])
def test_resend_sdk_surfaces_our_message(sdk, kind, status):
    rendered = resend.render_refusal(Refusal(kind, f"Keybrake refused: {kind.code}."))
    sdk(rendered.status, rendered.body, rendered.headers)
    with pytest.raises(ResendError) as raised:
        resend_sdk.Emails.send(email())
    assert raised.value.message == f"Keybrake refused: {kind.code}."
    assert raised.value.code == status


def test_resend_sdk_raises_invalid_api_key_error_for_a_revoked_vault_key(sdk):
    rendered = resend.render_refusal(Refusal(RefusalKind.KEY_REVOKED, "Keybrake vault key kbk_1 was revoked."))
    sdk(rendered.status, rendered.body, rendered.headers)
    with pytest.raises(InvalidApiKeyError) as raised:
        resend_sdk.Emails.send(email())
    assert raised.value.message == "Keybrake vault key kbk_1 was revoked."
    assert raised.value.headers["x-keybrake-refusal"] == "keybrake_key_revoked"


@pytest.mark.parametrize(
    "body",
    [
        # Python keeps a repeated key's last value; a reader that keeps the first sends 50 more.
        b'{"from": "a@acme.dev", "to": "a@example.com", "cc": ' + json.dumps(FIFTY).encode()
        + b', "cc": "c@example.com", "subject": "hi"}',
        b'{"from": "a@acme.dev", "to": ' + json.dumps(FIFTY).encode() + b', "to": "a@example.com"}',
    ],
)
def test_an_email_naming_a_field_twice_is_refused(body):
    with pytest.raises(MalformedRequest, match="more than once"):
        resend.estimate(req("POST", "/emails", body), RATES)


def test_json_nested_past_any_email_is_refused_as_malformed():
    with pytest.raises(MalformedRequest):
        resend.estimate(req("POST", "/emails", b'{"to": "a@example.com", "tags": ' + b"[" * 100_000 + b"]" * 100_000
                            + b"}"), RATES)


@pytest.mark.parametrize("name", ["Bcc", "cc", "TO", " Cc "])
def test_recipients_in_custom_headers_are_refused(name):
    with pytest.raises(MalformedRequest, match="headers"):
        resend.estimate(req("POST", "/emails", email(headers={name: ", ".join(FIFTY)})), RATES)


def test_other_custom_headers_pass():
    got = resend.estimate(req("POST", "/emails", email(headers={"X-Entity-Ref-ID": "123", "Reply-To": "r@x.dev"})),
                          RATES)
    assert got == CostEstimate(usd_micros=900, currency="usd")


def test_a_repeated_key_in_a_response_is_read_as_before():
    """Only requests are refused for it: a response's ids are read as Python reads them."""
    got = resend.outcome(req("POST", "/emails", email()), resp(200, b'{"id": "e1", "id": "e2"}'), RATES)
    assert got.object_ids == ("e2",)
