"""Twilio (api.twilio.com): credential, cost estimate, outcome and refusal shape.

Pure functions only. Twilio's REST API takes HTTP Basic auth (Account SID or API key SID as
the user, auth token or key secret as the password) and names the account in every path, so
the vault key travels as the password and the path's account must be the stored secret's.
Messages and calls are priced from the request with the configured per-country rates
(`pricing.TwilioRates`); Twilio fills `price` in only later, so the estimate usually stands.
Endpoints that reveal or mint credentials (accounts, API keys) are never let through.

Facts about Twilio's API this relies on (Twilio's REST API reference; twilio-python):
- Bodies are forms. Paths start with an API version (2010-04-01 today; 2008-08-01 still
  answers), then `/Accounts/{AC...}`.
- A message's or call's `price` is a negative decimal string, null at creation.
- A call takes its instructions from one of `Twiml` (inline, up to 4,000 characters), `Url`
  or `ApplicationSid` (fetched when the call connects, with `FallbackUrl` on error). Without
  `TimeLimit` (seconds) a call may last Twilio's default of 4 hours.
- A call can also ask for features billed apart from its minutes: `Record=true` (recording, per
  recorded minute) and `MachineDetection=Enable|DetectMessageEnd` (answering-machine detection,
  per call; `AsyncAmd=true` runs it in the background). Their options (`RecordingChannels`,
  `Trim`, `MachineDetectionTimeout`, `AsyncAmdStatusCallback`, ...) only shape that feature.
  twilio-python lowercases `record` (true/false) and sends `async_amd` as given.
- twilio-python raises TwilioRestException for every non-2xx answer and retries nothing.
"""

import json
import re
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from decimal import ROUND_CEILING, Decimal, InvalidOperation
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
from .auth_headers import basic, basic_credentials
from .forms import parse_form_pairs, parse_json_object
from .sms_segments import count_segments

if TYPE_CHECKING:  # pricing imports the vendors package: a runtime import here would be circular
    from ..pricing import TwilioRates

NAME = "twilio"
HOSTS = ("api.twilio.com",)

# Any API version (2010-04-01, 2008-08-01, ...), or none: the account check and the credential
# guard must not depend on which version a path names.
_ANY_VERSION = r"^(?:/[^/]+)?"
_ACCOUNT_PATH = re.compile(_ANY_VERSION + r"/Accounts/([^/]+?)(?:\.(?:json|xml|csv))?(?:/|$)", re.IGNORECASE)


def _resource(tail: str) -> re.Pattern[str]:
    # Twilio answers in JSON with `.json`, in XML without a suffix or with `.xml`: all create alike.
    return re.compile(rf"^/2010-04-01/Accounts/[^/]+/{tail}(?:\.json|\.xml)?$", re.IGNORECASE)


_MESSAGES = _resource("Messages")
_MESSAGE = _resource("Messages/[A-Za-z0-9]+")  # update, redact or cancel a message: no charge
_CALLS = _resource("Calls")

# Endpoints whose answer holds a real credential, refused whatever the method and API version:
# listing or creating accounts shows (sub)account auth tokens, an Account resource carries its
# `auth_token`, creating an API key or signing key returns its secret, and a Token holds
# TURN server credentials.
_CREDENTIAL_ENDPOINTS = (
    re.compile(_ANY_VERSION + r"/Accounts(?:\.[A-Za-z]+)?/?$", re.IGNORECASE),
    re.compile(_ANY_VERSION + r"/Accounts/[^/]+/?$", re.IGNORECASE),
    re.compile(_ANY_VERSION + r"/Accounts/[^/]+/(?:Keys|SigningKeys|Tokens)(?:[./]|$)", re.IGNORECASE),
)

# Twilio reads one value of each of these and does not say which when one is repeated, so the
# value we price might not be the one it sends or dials: a repeat is refused. (MediaUrl repeats
# by design; any MediaUrl makes an MMS, so its values do not matter.) Names are compared
# without case so that `To` and `to` cannot smuggle a second destination past the check.
_SINGLE_VALUED_FIELDS = ("To", "From", "Body", "MessagingServiceSid", "TimeLimit", "SendAsMms", "ContentSid",
                         "Twiml", "Url", "ApplicationSid", "FallbackUrl", "Record", "MachineDetection", "AsyncAmd")
# Fields that change the price: Twilio may read them from the query string of a POST too, where
# the body-only estimate would not see them.
_PRICED_FIELDS = frozenset(name.casefold() for name in (*_SINGLE_VALUED_FIELDS, "MediaUrl"))

# What a message is and how it is priced: as for a call, another case (`mediaurl`) would escape the
# estimate, which reads these names as written (an MMS priced as an SMS), while Twilio might take it.
_MESSAGE_FIELDS = ("To", "Body", "MediaUrl", "SendAsMms", "ContentSid")
# What a call does once answered, and for how long. Written in another case (`timelimit`) a
# field would escape the estimate, which reads these names as written, while Twilio might
# still take it: refused.
_CALL_FIELDS = ("TimeLimit", "Twiml", "Url", "ApplicationSid", "FallbackUrl", "Record", "MachineDetection", "AsyncAmd")
# Switches for features Twilio bills apart from the call's minutes (recording per recorded minute,
# answering-machine detection per call), for which Keybrake has no verified rate: only an explicit
# false (in any case: twilio-python sends AsyncAmd as the caller wrote it, "False" for False) or
# absence is let through. Anything else ("true", "1", "", " false") Twilio might read as on.
# MachineDetection takes a mode, not a boolean: any value at all asks for detection.
# The options of these features are left alone, in any case: RecordingChannels, RecordingTrack,
# Trim, RecordingStatusCallback*, RecordingConfigurationId shape a recording that only Record
# starts, and MachineDetectionTimeout/-Threshold and AsyncAmdStatusCallback* tune a detection that
# only MachineDetection starts. Without their switch (checked here, exactly spelled, single-valued,
# never in the query string) there is nothing for them to act on or bill.
_CALL_BOOLEAN_FEATURES = {
    "Record": "call recording (Record) is billed per recorded minute on top of the call's minutes, and "
              "Keybrake has no rate for it: place the call without 'Record' (or with Record=false), and "
              "record in your own system if you need a recording",
    "AsyncAmd": "AsyncAmd asks for answering-machine detection, which is billed per call on top of the call's "
                "minutes and which Keybrake has no rate for: place the call without 'AsyncAmd' (or with "
                "AsyncAmd=false) and without 'MachineDetection'",
}
_MACHINE_DETECTION_REFUSAL = ("answering-machine detection (MachineDetection) is billed per call on top of the "
                              "call's minutes, and Keybrake has no rate for it: place the call without "
                              "'MachineDetection' (and without AsyncAmd)")
# Instructions Twilio fetches when the call connects, unknown to Keybrake at pricing time.
_FETCHED_INSTRUCTIONS = ("Url", "ApplicationSid", "FallbackUrl")
_MAX_TWIML_CHARS = 4000  # Twilio's own limit on the Twiml parameter
# The TwiML verbs that can neither start another billed leg (Dial, Enqueue, Connect, Refer...),
# send a message (Message, Sms), record or pay, nor hand the call to TwiML fetched later
# (Redirect; Gather's and Record's action): everything else is refused.
_SAFE_VERBS = frozenset({"Say", "Play", "Pause", "Hangup", "Reject"})
_SSML_TAGS = frozenset({"break", "emphasis", "lang", "p", "phoneme", "prosody", "s", "say-as", "sub", "w"})

_READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
_PHONE_SCHEMES = frozenset({"whatsapp", "sms", "tel"})
_REAL_SECRET = re.compile(r"^[A-Za-z0-9]{32}$")


# --- credentials -----------------------------------------------------------------------------

def presented_credential(headers: Mapping[str, str]) -> PresentedCredential | None:
    """The Basic-auth password is where the SDKs put the auth token, so the vault key goes there."""
    basic_auth = basic_credentials(headers)
    if basic_auth is None or not basic_auth[1]:
        return None
    return PresentedCredential(token=basic_auth[1])  # the user goes: the secret's own is sent (authorization_header)


def looks_like_real_secret(token: str) -> bool:
    """Auth tokens are 32 lowercase hex characters, API key secrets 32 alphanumerics."""
    return bool(_REAL_SECRET.match(token))


def authorization_header(secret: str, auth_user: str | None) -> str:
    """Basic auth with the stored secret's own user: its Account SID, or its API key SID."""
    if not auth_user:
        raise ValueError("a Twilio secret needs the Account SID or API key SID it authenticates as")
    return basic(auth_user, secret)


def account_ref(request: VendorRequest) -> str | None:
    """The account the path names (the gate has refused paths that could resolve elsewhere)."""
    match = _ACCOUNT_PATH.match(request.path)
    return match[1] if match else None


def connected_account(request: VendorRequest) -> str | None:
    """Twilio has no such header: a subaccount is named in the path (account_ref)."""
    return None


def idempotency_key(headers: Mapping[str, str]) -> str | None:
    """Twilio's REST API has no request idempotency header: every call is its own reservation."""
    return None


# --- estimates -------------------------------------------------------------------------------

def estimate(request: VendorRequest, rates: "TwilioRates") -> CostEstimate:
    """The most this call can cost in USD micros, or why it cannot be told."""
    if _is_credential_endpoint(request.path):  # before the free reads: a GET is enough to leak
        raise CredentialEndpoint("its answer holds Twilio credentials (auth tokens or API key secrets)")
    if request.method in _READ_ONLY_METHODS:
        return CostEstimate()
    if request.method != "POST":
        raise Unpriced(f"{request.method} is not a method Twilio's API uses")
    if _MESSAGE.match(request.path):
        return CostEstimate()
    if _MESSAGES.match(request.path):
        return _message(_priced_form(request), rates)
    if _CALLS.match(request.path):
        return _call(_priced_form(request), request.body, rates)
    raise Unpriced("Keybrake prices only sending messages and placing calls on Twilio")


def _is_credential_endpoint(path: str) -> bool:
    return any(pattern.match(path) for pattern in _CREDENTIAL_ENDPOINTS)


def _priced_form(request: VendorRequest) -> dict[str, str]:
    """The form of a priced POST, once nothing in it could make Twilio charge for other values."""
    pairs = parse_form_pairs(request.body)
    body_names = Counter(name.casefold() for name, _ in pairs)
    for name in _SINGLE_VALUED_FIELDS:
        if body_names[name.casefold()] > 1:
            raise MalformedRequest(f"'{name}' is given more than once, so Keybrake cannot tell which one "
                                   "Twilio would use")
    for name, _ in parse_form_pairs(request.query.encode()):
        if name.casefold() in _PRICED_FIELDS:
            raise MalformedRequest(f"'{name}' must be sent in the form body, not in the query string")
    return dict(pairs)  # a repeated name keeps its last value


def _message(form: Mapping[str, str], rates: "TwilioRates") -> CostEstimate:
    _require_exact_names(form, _MESSAGE_FIELDS)
    number = _destination(form)
    if form.get("ContentSid"):
        raise Unpriced("messages from a content template (ContentSid) are not priced by Keybrake yet")
    body = form.get("Body", "")
    # dict(pairs) keeps the last of repeated MediaUrl values, possibly an empty one: presence decides.
    if "MediaUrl" in form or form.get("SendAsMms", "").lower() == "true":
        per_message = _country_rate(number, rates.mms_usd_per_message, rates.default_mms_usd_per_message,
                                    "MMS", "mms_usd_per_message")
        # Carriers charge MMS fees per message, whatever the length of its text.
        return _usd(per_message + _carrier_fee(number, rates.mms_carrier_fee_usd_per_message))
    if not body:
        raise MalformedRequest("a message needs a 'Body' or a 'MediaUrl'")
    per_segment = _country_rate(number, rates.sms_usd_per_segment, rates.default_sms_usd_per_segment,
                                "SMS", "sms_usd_per_segment")
    return _usd(count_segments(body) * (per_segment + _carrier_fee(number, rates.carrier_fee_usd_per_segment)))


def _carrier_fee(number: str, table: Mapping[str, Decimal]) -> Decimal:
    """Carrier fees are set per country where they exist; elsewhere the rate is all there is."""
    code = _longest_prefix(number, table)
    return table[code] if code is not None else Decimal(0)


def _call(form: Mapping[str, str], body: bytes, rates: "TwilioRates") -> CostEstimate:
    """The call's own leg, bounded by its TimeLimit, once its instructions cannot start another.

    A call priced at max_call_minutes is forwarded with that TimeLimit added, or Twilio's
    4-hour default would apply instead of the bound it was priced at.
    """
    number = _destination(form)
    _require_exact_names(form, _CALL_FIELDS)
    _check_call_features(form)
    _check_call_instructions(form, rates)
    forward_body = None
    if "TimeLimit" in form:
        minutes = -(-_time_limit_seconds(form["TimeLimit"]) // 60)  # Twilio bills started minutes
    elif rates.max_call_minutes is not None:
        minutes = rates.max_call_minutes
        forward_body = body + (b"&" if body else b"") + f"TimeLimit={minutes * 60}".encode()
    else:
        raise Unpriced("a call without 'TimeLimit' has no bound on its length: send TimeLimit (seconds) "
                       "or set twilio.max_call_minutes with `keybrake pricing set`")
    per_minute = _country_rate(number, rates.voice_usd_per_minute, rates.default_voice_usd_per_minute,
                               "voice", "voice_usd_per_minute")
    return replace(_usd(minutes * per_minute), forward_body=forward_body)


def _time_limit_seconds(raw: str) -> int:
    try:
        seconds = int(raw.strip())
    except ValueError:
        raise MalformedRequest(f"'TimeLimit' must be a whole number of seconds, got {raw!r}") from None
    if seconds < 1:
        raise MalformedRequest("'TimeLimit' must be at least 1 second")
    return seconds


def _require_exact_names(form: Mapping[str, str], names: tuple[str, ...]) -> None:
    by_folded = {name.casefold(): name for name in names}
    for name in form:
        expected = by_folded.get(name.casefold())
        if expected is not None and name != expected:
            raise MalformedRequest(f"'{name}' must be written '{expected}'")


def _check_call_features(form: Mapping[str, str]) -> None:
    """Refuse a call that asks for a feature billed apart from its minutes (_CALL_BOOLEAN_FEATURES)."""
    for name, refusal in _CALL_BOOLEAN_FEATURES.items():
        if name in form and form[name].lower() != "false":
            raise Unpriced(refusal)
    if "MachineDetection" in form:
        raise Unpriced(_MACHINE_DETECTION_REFUSAL)


def _check_call_instructions(form: Mapping[str, str], rates: "TwilioRates") -> None:
    """Refuse instructions that could run up charges the call's own minutes do not cover."""
    fetched = [name for name in _FETCHED_INSTRUCTIONS if name in form]
    if fetched and not rates.allow_call_url:
        raise Unpriced(f"a call whose TwiML Twilio fetches later ('{fetched[0]}') may dial further billed calls "
                       "that Keybrake never sees: send the instructions as 'Twiml' (Say, Play, Pause, Hangup, "
                       "Reject only), or accept that risk with `keybrake pricing set twilio.allow_call_url true`")
    if "Twiml" in form:
        _check_twiml(form["Twiml"])


def _check_twiml(twiml: str) -> None:
    if len(twiml) > _MAX_TWIML_CHARS:
        raise MalformedRequest(f"'Twiml' is over Twilio's limit of {_MAX_TWIML_CHARS} characters")
    if "<!DOCTYPE" in twiml.upper():  # entity declarations: nothing TwiML needs, and a parser bomb
        raise MalformedRequest("'Twiml' must not declare a DOCTYPE")
    try:
        response = ElementTree.fromstring(twiml)
    except ElementTree.ParseError:
        raise MalformedRequest("'Twiml' is not well-formed XML") from None
    if response.tag != "Response":
        raise MalformedRequest("'Twiml' must be one <Response> element")
    for verb in response:
        if verb.tag not in _SAFE_VERBS:
            raise Unpriced(f"TwiML <{verb.tag}> can start further billed calls or charges, or run TwiML that "
                           "Keybrake cannot see: a call's Twiml may use only Say, Play, Pause, Hangup and Reject")
        for inner in verb.iter():
            if inner is not verb and (verb.tag != "Say" or inner.tag not in _SSML_TAGS):
                raise Unpriced(f"TwiML <{inner.tag}> inside <{verb.tag}> is not something Keybrake can price")


def _destination(form: Mapping[str, str]) -> str:
    """The E.164 digits of `To`, without the `whatsapp:`-style scheme and the `+`."""
    to = form.get("To", "").strip()
    if not to:
        raise MalformedRequest("the parameter 'To' is required")
    scheme, sep, rest = to.partition(":")
    if sep:
        if scheme.strip().lower() not in _PHONE_SCHEMES:
            raise Unpriced(f"destinations written {scheme.strip()}:... are not priced by Keybrake")
        to = rest
    # A form's unescaped '+' decodes to a space: strip it along with usual separators.
    digits = re.sub(r"[\s().-]", "", to).removeprefix("+")
    if not re.fullmatch(r"[0-9]{1,15}", digits):
        raise MalformedRequest("'To' is not a phone number in E.164 form (+ country code and number)")
    return digits


# +1 also dials the Caribbean and Atlantic countries of the North American Numbering Plan,
# whose rates are far above US ones: a "1" rate must not price them. (US territories such as
# Puerto Rico, +1787, are priced as the US.)
NANP_ELSEWHERE = frozenset(
    "1242 1246 1264 1268 1284 1345 1441 1473 1649 1658 1664 1721 1758 1767 1784 1809 1829 1849 "
    "1868 1869 1876".split()
)


def _longest_prefix(number: str, table: Mapping[str, Decimal]) -> str | None:
    for length in range(min(4, len(number)), 0, -1):
        if number[:length] in table:
            return number[:length]
        if number[:length] in NANP_ELSEWHERE:
            return None  # only an entry for that code itself, or a default, may price it
    return None


def _country_rate(number: str, table: Mapping[str, Decimal], default: Decimal | None,
                  what: str, field: str) -> Decimal:
    code = _longest_prefix(number, table)
    if code is not None:
        return table[code]
    if default is not None:
        return default
    calling_code = _calling_code(number)
    raise Unpriced(f"no {what} rate for +{calling_code} numbers: set twilio.{field}.{calling_code} "
                   f"(or twilio.default_{field}) with `keybrake pricing set`")


# ITU-T E.164 country codes of two digits; "1" and "7" are one digit, all others three.
# Only used to name the field to set in an Unpriced message.
_TWO_DIGIT_CODES = frozenset(
    "20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 58 "
    "60 61 62 63 64 65 66 81 82 84 86 90 91 92 93 94 95 98".split()
)


def _calling_code(number: str) -> str:
    if number[:4] in NANP_ELSEWHERE:
        return number[:4]
    if number[:1] in ("1", "7"):
        return number[:1]
    return number[:2] if number[:2] in _TWO_DIGIT_CODES else number[:3]


def _micros(usd: Decimal) -> int:
    return int((usd * MICROS_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def _usd(usd: Decimal) -> CostEstimate:
    return CostEstimate(usd_micros=_micros(usd), currency="usd")


# --- outcomes --------------------------------------------------------------------------------

def outcome(request: VendorRequest, response: VendorResponse, rates: "TwilioRates") -> Outcome:
    """The created object's SID and, when Twilio already knows it, its price."""
    request_id = response.headers.get("twilio-request-id")
    body = parse_json_object(response.body)
    body = body if isinstance(body, dict) else {}
    sid = body.get("sid")
    ids = (sid,) if isinstance(sid, str) and sid else ()
    if not 200 <= response.status < 300:
        return Outcome(usd_micros=None, object_ids=ids, vendor_request_id=request_id)
    if request.method in _READ_ONLY_METHODS or _MESSAGE.match(request.path):
        # A fetched or updated message still shows its price: that was counted when it was sent.
        return Outcome(usd_micros=0, object_ids=ids, vendor_request_id=request_id)
    return Outcome(usd_micros=_price_micros(body), object_ids=ids, vendor_request_id=request_id)


def _price_micros(body: dict) -> int | None:
    """`price` is a negative decimal string, null until Twilio has rated the message or call."""
    price, unit = body.get("price"), body.get("price_unit")
    if price is None or not isinstance(unit, str) or unit.upper() != "USD":
        return None
    try:
        amount = Decimal(str(price))
    except InvalidOperation:
        return None
    return _micros(abs(amount)) if amount.is_finite() else None


def price_lookup_path(object_id: str, account_sid: str) -> str:
    """Where Twilio shows a message's or call's final price (null at creation, filled in later)."""
    kind = "Calls" if object_id.startswith("CA") else "Messages"
    return f"/2010-04-01/Accounts/{account_sid}/{kind}/{object_id}.json"


def final_price(response: VendorResponse) -> int | None:
    """The USD micros a fetched message or call finally cost, or None while Twilio has no price."""
    body = parse_json_object(response.body)
    if not 200 <= response.status < 300 or not isinstance(body, dict):
        return None
    return _price_micros(body)


# --- refusals --------------------------------------------------------------------------------

# Twilio error codes by HTTP status, so code that branches on `TwilioRestException.code`
# sees the nearest Twilio meaning: 20003 authentication failed (wrong credentials for the
# account), 20006 access denied (insufficient privileges for the resource), 20429 too many
# requests, 20503 service unavailable. Twilio has no generic 400 code; its error dictionary
# lists the bare HTTP code (400 Bad Request), which is also what twilio-python falls back to
# when a body has no code. Our own code is in `keybrake_code` and `details`.
_TWILIO_CODES = {401: 20003, 403: 20006, 429: 20429, 503: 20503}
MORE_INFO = "https://github.com/keybrake/keybrake#refusals"


def refusal_status(kind: RefusalKind) -> int:
    """The HTTP status this vendor's refusal answers with (the audit row records the same)."""
    return kind.status


def render_refusal(refusal: Refusal) -> RenderedResponse:
    """A Twilio-shaped error. twilio-python (Version.exception) raises TwilioRestException with
    `.status` the HTTP status, `.code` the Twilio code, `.msg` "<SDK prefix>: <our message>"
    (e.g. "Unable to create record: ...") and `.details` our details. It retries nothing. The
    body must not carry `type` and `title` together with `status` and `code`: the SDK would then
    read it as an RFC 9457 problem and raise TwilioServiceException instead."""
    kind = refusal.kind
    headers = {"content-type": "application/json", "x-keybrake-refusal": kind.code}
    if kind.is_cap_hit:
        headers["x-keybrake-cap-hit"] = "true"
    if refusal.cap is not None:
        headers["x-keybrake-cap"] = refusal.cap
    if refusal.retry_after_s is not None:
        headers["retry-after"] = str(refusal.retry_after_s)
    body = {
        "code": _TWILIO_CODES.get(kind.status, kind.status),
        "message": refusal.message,
        "more_info": MORE_INFO,
        "status": kind.status,
        "keybrake_code": kind.code,
        "details": {"keybrake_code": kind.code},
    }
    return RenderedResponse(kind.status, headers, json.dumps(body).encode())
