"""Resend (api.resend.com): credential, cost estimate, outcome and refusal shape.

Pure functions only. Resend takes `Authorization: Bearer re_...`; vault keys keep the `re_`
prefix (`re_kb_...`). Sending is priced per email at `ResendRates.usd_per_email`, where Resend
counts every To, CC and BCC recipient as one email against the quota ("Multiple To, CC, or BCC
recipients in sent emails count as separate emails", Resend's knowledge base on email quota).

Facts about Resend's API this relies on (Resend's API reference; resend-python, resend-node):
- POST /emails takes one email as JSON (`to` may list several recipients) and answers
  `{"id": ...}`; POST /emails/batch takes a JSON array of up to 100 and answers
  `{"data": [{"id": ...}, ...]}`.
- `Idempotency-Key` (up to 256 characters, kept 24 hours) on both sends.
- Errors are `{"statusCode", "message", "name"}`; neither SDK retries.
"""

import json
import re
from collections.abc import Mapping
from decimal import ROUND_CEILING, Decimal
from typing import TYPE_CHECKING

from ..money import MICROS_PER_USD
from .base import (
    CostEstimate,
    CredentialEndpoint,
    MalformedRequest,
    Outcome,
    PresentedCredential,
    Refusal,
    RefusalKind,
    RenderedResponse,
    Unpriced,
    VendorRequest,
    VendorResponse,
)
from .auth_headers import bearer, bearer_token
from .forms import parse_json_object, parse_json_request

if TYPE_CHECKING:  # pricing imports the vendors package: a runtime import here would be circular
    from ..pricing import ResendRates

NAME = "resend"
HOSTS = ("api.resend.com",)
VAULT_KEY_PREFIX = "re_kb_"
_REAL_SECRET_PREFIX = "re_"
MAX_BATCH = 100

_READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
_SEND = re.compile(r"^/emails$", re.IGNORECASE)
_SEND_BATCH = re.compile(r"^/emails/batch$", re.IGNORECASE)
_EMAIL = re.compile(r"^/emails/[^/]+$", re.IGNORECASE)  # PATCH: reschedule
_EMAIL_ACTION = re.compile(r"^/emails/[^/]+/(?:cancel|share)$", re.IGNORECASE)  # cancel a scheduled send, share a link
# Resources that hold no email of their own: writing them sends nothing.
_FREE = re.compile(
    r"^/(?:domains|audiences|contacts|segments|topics|contact-properties|templates|webhooks"
    r"|suppressions)(?:/[^/]+)*$",
    re.IGNORECASE,
)
# Creating an API key returns its token: a real Resend key. Refused whatever the method, since
# nothing under it is worth the risk of one that does the same.
_API_KEYS = re.compile(r"^/api-keys(?:/.*)?$", re.IGNORECASE)
# Dot segments, empty segments and escaped separators could make the vendor route a request
# elsewhere than the path we priced (`/domains/../emails`); no SDK sends them.


# --- credentials -----------------------------------------------------------------------------

def presented_credential(headers: Mapping[str, str]) -> PresentedCredential | None:
    token = bearer_token(headers)
    return PresentedCredential(token=token) if token else None


def looks_like_real_secret(token: str) -> bool:
    return token.startswith(_REAL_SECRET_PREFIX) and not token.startswith(VAULT_KEY_PREFIX)


def authorization_header(secret: str, auth_user: str | None = None) -> str:
    return bearer(secret)


def account_ref(request: VendorRequest) -> str | None:
    """A Resend key is its team's; paths name no account."""
    return None


def connected_account(request: VendorRequest) -> str | None:
    """Resend has no connected accounts."""
    return None


def idempotency_key(headers: Mapping[str, str]) -> str | None:
    """Resend honours Idempotency-Key on /emails and /emails/batch (kept 24 hours)."""
    return headers.get("idempotency-key") or None


# --- estimates -------------------------------------------------------------------------------

def estimate(request: VendorRequest, rates: "ResendRates") -> CostEstimate:
    """The most this call can cost in USD micros, or why it cannot be told."""
    if _API_KEYS.match(request.path):
        raise CredentialEndpoint("Resend API keys are created and listed there, and a new key's token is real")
    if request.method in _READ_ONLY_METHODS:
        return CostEstimate()
    path = request.path
    if request.method == "POST" and _SEND.match(path):
        return _emails([_email(parse_json_request(request.body))], rates)
    if request.method == "POST" and _SEND_BATCH.match(path):
        return _emails(_batch(parse_json_request(request.body)), rates)
    if _free_write(request.method, path):
        return CostEstimate()
    raise Unpriced("Keybrake prices only sending email (/emails, /emails/batch) on Resend")


def _free_write(method: str, path: str) -> bool:
    return bool((method == "POST" and _EMAIL_ACTION.match(path)) or (method == "PATCH" and _EMAIL.match(path))
                or _FREE.match(path))


def _batch(document) -> list[dict]:
    if not isinstance(document, list) or not 1 <= len(document) <= MAX_BATCH:
        raise MalformedRequest(f"a batch is a JSON array of 1 to {MAX_BATCH} emails")
    return [_email(item) for item in document]


_RECIPIENT_FIELDS = ("to", "cc", "bcc")


def _email(document) -> dict:
    if not isinstance(document, dict):
        raise MalformedRequest("an email is a JSON object")
    _require_lower_case_recipient_fields(document)
    _refuse_recipient_headers(document.get("headers"))
    if not document.get("to"):
        raise MalformedRequest("an email needs 'to'")
    return document


def _require_lower_case_recipient_fields(email: dict) -> None:
    """Only the exact lower-case `to`, `cc` and `bcc` are counted. Whether Resend also reads `CC`
    or `Bcc` is not documented; if it did, recipients under such a key would be sent uncounted."""
    for key in email:
        folded = key.strip().casefold()
        if folded in _RECIPIENT_FIELDS and key != folded:
            raise MalformedRequest(f"the recipient field {key[:20]!r} must be spelled exactly {folded!r}, "
                                   "in lower case")


def _refuse_recipient_headers(headers) -> None:
    """An email's custom `headers` are passed to the message as written; a To, Cc or Bcc header
    there could add recipients the count never saw."""
    if not isinstance(headers, dict):
        return
    for name in headers:
        if name.strip().casefold() in _RECIPIENT_FIELDS:  # JSON names are strings
            raise MalformedRequest(f"custom headers must not set {name.strip()[:20]!r}: put recipients in "
                                   "'to', 'cc' or 'bcc', where Keybrake counts them")


def _recipients(email: dict) -> int:
    return sum(_addresses(email.get(field), field) for field in _RECIPIENT_FIELDS)


def _addresses(value, field: str) -> int:
    if value is None:
        return 0
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise MalformedRequest(f"'{field}' must be an address or a list of addresses")
    # An entry may itself list several ("a@x.com, b@y.com"): count its @ signs, at least one.
    return sum(max(1, item.count("@")) for item in items)


def _emails(emails: list[dict], rates: "ResendRates") -> CostEstimate:
    count = sum(_recipients(email) for email in emails)
    return CostEstimate(usd_micros=_micros(count * rates.usd_per_email), currency="usd")


def _micros(usd: Decimal) -> int:
    return int((usd * MICROS_PER_USD).to_integral_value(rounding=ROUND_CEILING))


# --- outcomes --------------------------------------------------------------------------------

def outcome(request: VendorRequest, response: VendorResponse, rates: "ResendRates") -> Outcome:
    """The ids of the emails sent. Their cost is the estimate's: a response lists one id per
    email, not per recipient, so counting ids could only under-count."""
    if not 200 <= response.status < 300:
        return Outcome(usd_micros=None)
    body = parse_json_object(response.body)
    ids: tuple[str, ...] = ()
    if isinstance(body, dict) and isinstance(body.get("id"), str):
        ids = (body["id"],)
    elif isinstance(body, dict) and isinstance(body.get("data"), list):
        ids = tuple(item["id"] for item in body["data"] if isinstance(item, dict) and isinstance(item.get("id"), str))
    free = request.method in _READ_ONLY_METHODS or _free_write(request.method, request.path)
    return Outcome(usd_micros=0 if free else None, object_ids=ids)


# --- refusals --------------------------------------------------------------------------------

# resend-python raises by (HTTP status, `name`) through exceptions.raise_for_code_and_type:
#   401 missing_api_key     -> MissingApiKeyError: the SDK replaces our message with its own
#                              "Missing API key in the authorization header.", which is true only
#                              when no key was sent, so only MISSING_KEY uses this name.
#   403 invalid_api_key     -> InvalidApiKeyError, our message. Resend answers a key it does not
#                              accept this way, so every other key refusal (401 for Stripe and
#                              Twilio) is rendered as 403 here, as are the policy refusals.
#   400 validation_error    -> ValidationError, our message.
#   429 rate_limit_exceeded -> RateLimitError, our message; `.headers` carries retry-after and
#                              x-keybrake-cap-hit.
#   503 application_error   -> ResendError (the SDK maps only 500), our message.
# resend-node returns `{data: null, error: {statusCode, message, name}}` and throws nothing.
# Neither SDK retries, so a refusal is never repeated by the client library.
_RESEND_NAMES = {403: "invalid_api_key", 400: "validation_error", 429: "rate_limit_exceeded",
                 503: "application_error"}


def render_refusal(refusal: Refusal) -> RenderedResponse:
    """A Resend-shaped error that resend-python raises as its usual class for the status."""
    kind = refusal.kind
    headers = {"content-type": "application/json", "x-keybrake-refusal": kind.code}
    if kind.is_cap_hit:
        headers["x-keybrake-cap-hit"] = "true"
    if refusal.cap is not None:
        headers["x-keybrake-cap"] = refusal.cap
    if refusal.retry_after_s is not None:
        headers["retry-after"] = str(refusal.retry_after_s)
    status = refusal_status(kind)
    name = "missing_api_key" if kind is RefusalKind.MISSING_KEY else _RESEND_NAMES.get(status, "application_error")
    body = {"statusCode": status, "message": refusal.message, "name": name, "keybrake_code": kind.code}
    return RenderedResponse(status, headers, json.dumps(body).encode())


def refusal_status(kind: RefusalKind) -> int:
    """Resend's only 401 is a missing key; a key it does not accept gets 403 invalid_api_key."""
    if kind.status == 401 and kind is not RefusalKind.MISSING_KEY:
        return 403
    return kind.status
