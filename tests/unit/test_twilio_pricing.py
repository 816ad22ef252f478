"""Twilio vendor module: cost estimates, credentials, outcomes and refusal rendering.

Default rates (pricing.TwilioRates): US SMS $0.0083 per segment + $0.0062 carrier fee,
MMS $0.0220 per message + $0.0100 carrier fee, voice $0.0140 per minute; no other country,
no defaults.
"""

import base64
import json
import logging
from dataclasses import replace
from decimal import Decimal
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.base.version import Version
from twilio.http import HttpClient
from twilio.http.response import Response as TwilioResponse
from twilio.rest import Client

from keybrake_addon.pricing import TwilioRates
from keybrake_addon.vault.vault_keys import derive_vault_key
from keybrake_addon.vendors import twilio
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

RATES = TwilioRates()
ACCOUNT = "AC" + "0123456789abcdef" * 2
API_KEY_SID = "SK" + "fedcba9876543210" * 2
MESSAGES = f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
CALLS = f"/2010-04-01/Accounts/{ACCOUNT}/Calls.json"
MESSAGE_SID = "SM" + "0123456789abcdef" * 2
US = "+14155550100"
UK = "+447700900123"
VAULT_KEY = derive_vault_key(b"k" * 32, "twilio", "kbk_test")


def req(method: str, path: str, form: dict | list | None = None, headers: dict | None = None,
        query: dict | list | None = None) -> VendorRequest:
    body = urlencode(form or {}, doseq=True).encode()
    return VendorRequest(method=method, path=path, query=urlencode(query or {}, doseq=True), headers=headers or {},
                         body=body)


def resp(status: int, body, headers: dict | None = None) -> VendorResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return VendorResponse(status=status, headers=headers or {}, body=raw)


def sms(to: str = US, body: str = "hello", **extra) -> VendorRequest:
    return req("POST", MESSAGES, {"To": to, "From": "+14155550199", "Body": body, **extra})


def basic(user: str, password: str) -> dict:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# --- SMS estimates ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "body, usd_micros",
    [
        ("hello", 14_500),  # 1 segment x (0.0083 + 0.0062)
        ("a" * 160, 14_500),
        ("a" * 161, 29_000),  # 2 segments
        ("a" * 307, 43_500),  # 3 segments
        ("hello \N{GRINNING FACE}", 14_500),  # UCS-2, 8 units: 1 segment
        ("\N{CYRILLIC SMALL LETTER ZHE}" * 71, 29_000),  # UCS-2, 2 segments
    ],
)
def test_us_sms_is_segments_times_rate_plus_carrier_fee(body, usd_micros):
    assert twilio.estimate(sms(body=body), RATES) == CostEstimate(usd_micros=usd_micros, currency="usd")


@pytest.mark.parametrize(
    "to",
    [
        US,
        "whatsapp:" + US,
        "sms:" + US,
        "+1 (415) 555-0100",
        " 14155550100",  # an unescaped '+' in a form body decodes to a space
        "14155550100",
    ],
)
def test_destination_forms_all_resolve_to_the_us_rate(to):
    assert twilio.estimate(sms(to=to), RATES).usd_micros == 14_500


def test_messaging_service_instead_of_from_is_priced_the_same():
    request = req("POST", MESSAGES, {"To": US, "MessagingServiceSid": "MG" + "0" * 32, "Body": "hi"})
    assert twilio.estimate(request, RATES).usd_micros == 14_500


def test_country_without_rate_or_default_is_unpriced_and_names_the_field():
    with pytest.raises(Unpriced) as refused:
        twilio.estimate(sms(to=UK), RATES)
    message = str(refused.value)
    assert "+44" in message
    assert "twilio.sms_usd_per_segment.44" in message
    assert "twilio.default_sms_usd_per_segment" in message
    assert "keybrake pricing set" in message
    assert UK.lstrip("+") not in message  # the phone number itself is not logged


@pytest.mark.parametrize(
    "to, code",
    [
        ("+33612345678", "33"),  # two-digit country code
        ("+35312345678", "353"),  # three-digit
        ("+79123456789", "7"),  # one-digit
    ],
)
def test_unpriced_message_names_the_calling_code(to, code):
    with pytest.raises(Unpriced, match=rf"\+{code} numbers: set twilio\.sms_usd_per_segment\.{code} "):
        twilio.estimate(sms(to=to), RATES)


def test_default_sms_rate_prices_other_countries_without_a_carrier_fee():
    rates = replace(RATES, default_sms_usd_per_segment=Decimal("0.04"))
    assert twilio.estimate(sms(to=UK), rates).usd_micros == 40_000  # carrier fees are only set for "1"
    assert twilio.estimate(sms(to=UK, body="a" * 161), rates).usd_micros == 80_000
    assert twilio.estimate(sms(to=US), rates).usd_micros == 14_500  # a country rate beats the default


def test_country_rate_with_its_own_carrier_fee():
    rates = replace(RATES, sms_usd_per_segment={**RATES.sms_usd_per_segment, "44": Decimal("0.0524")},
                    carrier_fee_usd_per_segment={**RATES.carrier_fee_usd_per_segment, "44": Decimal("0.001")})
    assert twilio.estimate(sms(to=UK), rates).usd_micros == 53_400


def test_longest_calling_code_prefix_wins():
    rates = replace(RATES, sms_usd_per_segment={"1": Decimal("0.0083"), "1264": Decimal("0.05")})
    # +1264 (Anguilla) uses its own rate; US carrier fees ("1") do not reach it, since +1264 is
    # another country of the +1 plan: only a fee entry for 1264 itself would apply.
    assert twilio.estimate(sms(to="+12645550100"), rates).usd_micros == 50_000
    assert twilio.estimate(sms(to=US), rates).usd_micros == 14_500
    no_fee = replace(rates, carrier_fee_usd_per_segment={"1": Decimal("0.0062"), "1264": Decimal("0")})
    assert twilio.estimate(sms(to="+12645550100"), no_fee).usd_micros == 50_000


def test_estimates_round_up_to_the_micro():
    rates = replace(RATES, sms_usd_per_segment={"44": Decimal("0.0524001")})
    assert twilio.estimate(sms(to=UK), rates).usd_micros == 52_401  # 52,400.1 micros
    tiny = replace(RATES, default_sms_usd_per_segment=Decimal("0.0000001"))
    assert twilio.estimate(sms(to=UK), tiny).usd_micros == 1


# --- MMS ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "form",
    [
        {"To": US, "From": "+14155550199", "MediaUrl": "https://example.com/cat.png"},  # no Body
        {"To": US, "From": "+14155550199", "Body": "", "MediaUrl": "https://example.com/cat.png"},
        {"To": US, "From": "+14155550199", "Body": "a" * 500, "MediaUrl": "https://example.com/cat.png"},
        {"To": US, "From": "+14155550199", "Body": "hi", "SendAsMms": "true"},
        [("To", US), ("From", "+14155550199"), ("MediaUrl", "https://example.com/1.png"),
         ("MediaUrl", "https://example.com/2.png")],
        [("To", US), ("Body", "hi"), ("MediaUrl", "https://example.com/1.png"), ("MediaUrl", "")],
    ],
)
def test_any_media_makes_one_mms_per_message(form):
    # 0.0220 MMS + 0.0100 carrier fee, once per message however long the text
    assert twilio.estimate(req("POST", MESSAGES, form), RATES) == CostEstimate(usd_micros=32_000, currency="usd")


def test_mms_carrier_fee_is_configurable_per_country():
    mms = {"To": UK, "MediaUrl": "https://example.com/cat.png"}
    rates = replace(RATES, mms_usd_per_message={**RATES.mms_usd_per_message, "44": Decimal("0.04")},
                    mms_carrier_fee_usd_per_message={**RATES.mms_carrier_fee_usd_per_message, "44": Decimal("0.002")})
    assert twilio.estimate(req("POST", MESSAGES, mms), rates).usd_micros == 42_000
    free_of_fees = replace(RATES, mms_carrier_fee_usd_per_message={})
    assert twilio.estimate(req("POST", MESSAGES, {**mms, "To": US}), free_of_fees).usd_micros == 22_000


def test_us_mms_carrier_fee_does_not_reach_other_nanp_countries():
    rates = replace(RATES, mms_usd_per_message={"1": Decimal("0.022"), "1876": Decimal("0.05")})
    jamaica = {"To": "+18765550100", "MediaUrl": "https://example.com/cat.png"}
    assert twilio.estimate(req("POST", MESSAGES, jamaica), rates).usd_micros == 50_000


def test_mms_without_rate_is_unpriced_and_default_mms_rate_applies():
    form = {"To": UK, "MediaUrl": "https://example.com/cat.png"}
    with pytest.raises(Unpriced, match=r"no MMS rate for \+44 numbers: set twilio\.mms_usd_per_message\.44 "
                                       r"\(or twilio\.default_mms_usd_per_message\)"):
        twilio.estimate(req("POST", MESSAGES, form), RATES)
    rates = replace(RATES, default_mms_usd_per_message=Decimal("0.1"))
    assert twilio.estimate(req("POST", MESSAGES, form), rates).usd_micros == 100_000


# --- invalid and unpriced messages ------------------------------------------------------------

@pytest.mark.parametrize(
    "form, error",
    [
        ({"From": "+14155550199", "Body": "hi"}, MalformedRequest),  # no To
        ({"To": "", "Body": "hi"}, MalformedRequest),
        ({"To": US, "From": "+14155550199"}, MalformedRequest),  # no Body, no media
        ({"To": US, "Body": ""}, MalformedRequest),
        ({"To": "not a number", "Body": "hi"}, MalformedRequest),
        ({"To": "+", "Body": "hi"}, MalformedRequest),
        ({"To": "+1234567890123456", "Body": "hi"}, MalformedRequest),  # 16 digits: longer than E.164
        ({"To": "messenger:1234567890", "Body": "hi"}, Unpriced),  # not a phone channel
        ({"To": US, "ContentSid": "HX" + "0" * 32}, Unpriced),  # template: body unknown
    ],
)
def test_invalid_or_unpriceable_messages(form, error):
    with pytest.raises(error):
        twilio.estimate(req("POST", MESSAGES, form), RATES)


# --- calls ------------------------------------------------------------------------------------

SAY = "<Response><Say>Your code is 1234</Say></Response>"

@pytest.mark.parametrize(
    "time_limit, usd_micros",
    [
        ("600", 140_000),  # 10 minutes x $0.014
        ("61", 28_000),  # a started minute counts: 2 minutes
        ("60", 14_000),
        ("1", 14_000),
        ("14400", 3_360_000),  # Twilio's 4-hour ceiling: 240 minutes
    ],
)
def test_call_is_bounded_by_time_limit(time_limit, usd_micros):
    request = req("POST", CALLS, {"To": US, "From": "+14155550199", "Twiml": SAY, "TimeLimit": time_limit})
    assert twilio.estimate(request, RATES) == CostEstimate(usd_micros=usd_micros, currency="usd")


def test_call_without_time_limit_is_unpriced_unless_max_call_minutes_is_set():
    request = req("POST", CALLS, {"To": US, "From": "+14155550199", "Twiml": SAY})
    with pytest.raises(Unpriced, match="TimeLimit.*twilio.max_call_minutes"):
        twilio.estimate(request, RATES)
    assert twilio.estimate(request, replace(RATES, max_call_minutes=30)).usd_micros == 420_000  # 30 x 0.014


def test_a_call_priced_at_max_call_minutes_is_forwarded_with_that_time_limit():
    # Without it Twilio's 4-hour default would apply, not the 30 minutes reserved.
    request = req("POST", CALLS, {"To": US, "From": "+14155550199", "Twiml": SAY})
    got = twilio.estimate(request, replace(RATES, max_call_minutes=30))
    assert got.forward_body == request.body + b"&TimeLimit=1800"
    forwarded = req("POST", CALLS, dict(parse_qsl(got.forward_body.decode())))
    assert twilio.estimate(forwarded, RATES) == replace(got, forward_body=None)  # priced alike, nothing to add


def test_a_call_with_its_own_time_limit_is_forwarded_as_sent():
    request = req("POST", CALLS, {"To": US, "Twiml": SAY, "TimeLimit": "60"})
    assert twilio.estimate(request, replace(RATES, max_call_minutes=30)).forward_body is None
    assert twilio.estimate(sms(), replace(RATES, max_call_minutes=30)).forward_body is None


@pytest.mark.parametrize("time_limit", ["", " "])
def test_a_blank_time_limit_is_refused_not_replaced(time_limit):
    # Adding a second TimeLimit would leave Twilio to pick one of two.
    with pytest.raises(MalformedRequest, match="TimeLimit"):
        twilio.estimate(req("POST", CALLS, {"To": US, "Twiml": SAY, "TimeLimit": time_limit}),
                        replace(RATES, max_call_minutes=30))


@pytest.mark.parametrize("form", [
    {"To": US, "Twiml": SAY, "timelimit": "60"},  # else priced at max_call_minutes, and Twilio may take 60
    {"To": US, "Twiml": SAY, "TIMELIMIT": "60"},
    {"To": US, "TimeLimit": "60", "twiml": "<Response><Dial>+447700900123</Dial></Response>"},
    {"To": US, "TimeLimit": "60", "Twiml": SAY, "url": "https://example.com/twiml"},
    {"To": US, "TimeLimit": "60", "Twiml": SAY, "applicationSid": "AP" + "0" * 32},
    {"To": US, "TimeLimit": "60", "Twiml": SAY, "fallbackurl": "https://example.com/twiml"},
])
def test_call_fields_in_another_case_are_refused(form):
    with pytest.raises(MalformedRequest, match="must be written"):
        twilio.estimate(req("POST", CALLS, form), replace(RATES, max_call_minutes=30))


@pytest.mark.parametrize("field, value", [
    ("Url", "https://example.com/twiml"),
    ("ApplicationSid", "AP" + "0" * 32),
    ("FallbackUrl", "https://example.com/fallback"),
])
def test_instructions_fetched_later_are_refused_unless_the_pricing_file_allows_them(field, value):
    form = {"To": US, "TimeLimit": "60", field: value}
    with pytest.raises(Unpriced, match="twilio.allow_call_url"):
        twilio.estimate(req("POST", CALLS, form), RATES)
    assert twilio.estimate(req("POST", CALLS, form), replace(RATES, allow_call_url=True)).usd_micros == 14_000


@pytest.mark.parametrize("twiml", [
    SAY,
    '<?xml version="1.0" encoding="UTF-8"?><Response><Say voice="alice">Hi</Say><Pause length="2"/>'
    '<Play digits="1w2"/><Hangup/></Response>',
    "<Response><Say>Hello <break time='1s'/><emphasis>you</emphasis></Say></Response>",
    "<Response><Reject/></Response>",
    "<Response></Response>",
])
def test_twiml_that_only_speaks_plays_or_hangs_up_is_priced(twiml):
    assert twilio.estimate(req("POST", CALLS, {"To": US, "Twiml": twiml, "TimeLimit": "60"}), RATES).usd_micros == 14_000


@pytest.mark.parametrize("twiml", [
    "<Response><Dial>+447700900123</Dial></Response>",
    "<Response><Say>hi</Say><Dial><Number>+447700900123</Number></Dial></Response>",
    "<Response><Dial><Sip>sip:a@example.com</Sip></Dial></Response>",
    "<Response><Dial><Client>alice</Client></Dial></Response>",
    "<Response><Dial><Conference>room</Conference></Dial></Response>",
    "<Response><Redirect>https://example.com/more</Redirect></Response>",  # TwiML Keybrake never sees
    "<Response><Gather action='https://example.com/next'><Say>Press 1</Say></Gather></Response>",
    "<Response><Enqueue>support</Enqueue></Response>",
    "<Response><Connect><Stream url='wss://example.com'/></Connect></Response>",
    "<Response><Message>hello</Message></Response>",  # an SMS of its own
    "<Response><Record/></Response>",
    "<Response><Say><Dial>+447700900123</Dial></Say></Response>",
    "<Response><Play><Dial>+447700900123</Dial></Play></Response>",
    "<Response><dial>+447700900123</dial></Response>",
])
def test_twiml_that_could_dial_or_run_other_twiml_is_refused(twiml):
    with pytest.raises(Unpriced, match="TwiML"):
        twilio.estimate(req("POST", CALLS, {"To": US, "Twiml": twiml, "TimeLimit": "60"}), RATES)


@pytest.mark.parametrize("twiml", [
    "<Response><Say>unclosed</Response>",
    "Dial +447700900123",
    "<Dial>+447700900123</Dial>",  # not in a Response
    '<!DOCTYPE r [<!ENTITY a "aaaa">]><Response><Say>&a;</Say></Response>',
    "<Response><Say>" + "a" * 4000 + "</Say></Response>",
])
def test_twiml_that_is_not_a_small_well_formed_response_is_refused(twiml):
    with pytest.raises(MalformedRequest):
        twilio.estimate(req("POST", CALLS, {"To": US, "Twiml": twiml, "TimeLimit": "60"}), RATES)


@pytest.mark.parametrize("field", ["Twiml", "Url"])
def test_call_instructions_in_the_query_string_or_repeated_are_refused(field):
    with pytest.raises(MalformedRequest):
        twilio.estimate(req("POST", CALLS, {"To": US, "Twiml": SAY, "TimeLimit": "60"},
                            query={field: "<Response><Dial>+447700900123</Dial></Response>"}), RATES)
    with pytest.raises(MalformedRequest):
        twilio.estimate(req("POST", CALLS, [("To", US), ("TimeLimit", "60"), (field, SAY), (field, SAY)]),
                        replace(RATES, allow_call_url=True))


def test_time_limit_beats_max_call_minutes():
    request = req("POST", CALLS, {"To": US, "Twiml": SAY, "TimeLimit": "120"})
    assert twilio.estimate(request, replace(RATES, max_call_minutes=30)).usd_micros == 28_000


def test_call_to_unpriced_country_names_the_voice_field():
    request = req("POST", CALLS, {"To": UK, "TimeLimit": "60"})
    with pytest.raises(Unpriced, match=r"twilio\.voice_usd_per_minute\.44 \(or twilio\.default_voice_usd_per_minute\)"):
        twilio.estimate(request, RATES)
    assert twilio.estimate(request, replace(RATES, default_voice_usd_per_minute=Decimal("0.1"))).usd_micros == 100_000


@pytest.mark.parametrize(
    "form, error",
    [
        ({"To": US, "TimeLimit": "ten"}, MalformedRequest),
        ({"To": US, "TimeLimit": "0"}, MalformedRequest),
        ({"To": US, "TimeLimit": "-60"}, MalformedRequest),
        ({"TimeLimit": "60"}, MalformedRequest),  # no To
        ({"To": "client:alice", "TimeLimit": "60"}, Unpriced),
        ({"To": "sip:alice@example.com", "TimeLimit": "60"}, Unpriced),
    ],
)
def test_invalid_or_unpriceable_calls(form, error):
    with pytest.raises(error):
        twilio.estimate(req("POST", CALLS, form), RATES)


# --- call features billed apart from the call's minutes ----------------------------------------
# Recording (Record) is billed per recorded minute and answering-machine detection
# (MachineDetection, AsyncAmd) per call. Keybrake has no verified rate for either, so a call that
# asks for them is refused as unpriced rather than priced as a bare call.

BARE_CALL = {"To": US, "From": "+14155550199", "Twiml": SAY, "TimeLimit": "60"}


@pytest.mark.parametrize("field, value, advice", [
    ("Record", "true", "without 'Record'"),
    ("Record", "True", "without 'Record'"),
    ("Record", "TRUE", "without 'Record'"),
    ("Record", "1", "without 'Record'"),  # not an explicit false: Twilio may read it as true
    ("Record", "yes", "without 'Record'"),
    ("Record", "", "without 'Record'"),
    ("Record", " false", "without 'Record'"),
    ("MachineDetection", "Enable", "without 'MachineDetection'"),
    ("MachineDetection", "DetectMessageEnd", "without 'MachineDetection'"),
    ("MachineDetection", "enable", "without 'MachineDetection'"),
    ("MachineDetection", "", "without 'MachineDetection'"),
    ("MachineDetection", "none", "without 'MachineDetection'"),  # not a value Twilio documents
    ("AsyncAmd", "true", "without 'AsyncAmd'"),
    ("AsyncAmd", "True", "without 'AsyncAmd'"),  # what twilio-python sends for async_amd=True
    ("AsyncAmd", "", "without 'AsyncAmd'"),
])
def test_call_features_billed_apart_are_refused_as_unpriced(field, value, advice):
    with pytest.raises(Unpriced) as refused:
        twilio.estimate(req("POST", CALLS, {**BARE_CALL, field: value}), RATES)
    assert advice in str(refused.value)
    # Not a question of rates or of fetched TwiML: no pricing setting lets it through.
    generous = replace(RATES, allow_call_url=True, max_call_minutes=30, default_voice_usd_per_minute=Decimal("1"))
    with pytest.raises(Unpriced):
        twilio.estimate(req("POST", CALLS, {**BARE_CALL, field: value}), generous)


def test_refusal_messages_say_what_to_do_instead():
    with pytest.raises(Unpriced, match=r"recording.*billed.*Record=false.*your own system"):
        twilio.estimate(req("POST", CALLS, {**BARE_CALL, "Record": "true"}), RATES)
    with pytest.raises(Unpriced, match=r"answering-machine detection.*billed.*without 'MachineDetection'"):
        twilio.estimate(req("POST", CALLS, {**BARE_CALL, "MachineDetection": "Enable"}), RATES)
    with pytest.raises(Unpriced, match=r"answering-machine detection.*AsyncAmd=false"):
        twilio.estimate(req("POST", CALLS, {**BARE_CALL, "AsyncAmd": "true"}), RATES)


@pytest.mark.parametrize("field, value", [
    ("record", "true"),
    ("RECORD", "true"),
    ("record", "false"),  # refused too: only the exact name is read
    ("ReCoRd", "true"),
    ("machinedetection", "Enable"),
    ("MACHINEDETECTION", "DetectMessageEnd"),
    ("Machinedetection", "Enable"),
    ("asyncamd", "true"),
    ("ASYNCAMD", "true"),
    ("AsyncAMD", "true"),
])
def test_call_feature_names_in_another_case_are_refused(field, value):
    with pytest.raises(MalformedRequest, match="must be written"):
        twilio.estimate(req("POST", CALLS, {**BARE_CALL, field: value}), RATES)


@pytest.mark.parametrize("field, value", [("mediaurl", "https://example.com/a.png"), ("MEDIAURL", "https://x/y"),
                                          ("sendasmms", "true"), ("SendAsMMS", "true"), ("contentsid", "HX1"),
                                          ("body", "hi"), ("TO", "+14155550100")])
def test_message_field_names_in_another_case_are_refused(field, value):
    base = {"To": "+14155550100", "From": "+14155550199", "Body": "hello"}
    form = {**{k: v for k, v in base.items() if k.casefold() != field.casefold()}, field: value}
    with pytest.raises(MalformedRequest, match="must be written"):
        twilio.estimate(req("POST", MESSAGES, form), RATES)


@pytest.mark.parametrize("form, query", [
    ([*BARE_CALL.items(), ("Record", "false"), ("Record", "true")], None),  # Twilio might read either
    ([*BARE_CALL.items(), ("Record", "false"), ("record", "true")], None),
    ([*BARE_CALL.items(), ("AsyncAmd", "false"), ("AsyncAmd", "true")], None),
    ([*BARE_CALL.items(), ("MachineDetection", "Enable"), ("MachineDetection", "Enable")], None),
    (BARE_CALL, {"Record": "true"}),  # where the body-only check would not see it
    (BARE_CALL, {"MachineDetection": "Enable"}),
    (BARE_CALL, {"asyncamd": "true"}),
])
def test_call_features_repeated_or_in_the_query_string_are_refused(form, query):
    with pytest.raises(MalformedRequest):
        twilio.estimate(req("POST", CALLS, form, query=query), RATES)


@pytest.mark.parametrize("extra", [
    {},
    {"Record": "false"},
    {"Record": "False"},  # twilio-python lowercases it; a false in any case is still false
    {"AsyncAmd": "false"},
    {"AsyncAmd": "False"},  # what twilio-python sends for async_amd=False
    {"Record": "false", "AsyncAmd": "false"},
    # Recording options do nothing without Record: there is no recording to split, trim or report.
    {"RecordingChannels": "dual", "Trim": "do-not-trim", "RecordingTrack": "both",
     "RecordingStatusCallback": "https://example.com/rec", "RecordingStatusCallbackEvent": "completed",
     "RecordingStatusCallbackMethod": "POST", "RecordingConfigurationId": "RC" + "0" * 32},
    {"Record": "false", "RecordingChannels": "dual", "Trim": "trim-silence"},
    # Detection tuning does nothing without MachineDetection.
    {"MachineDetectionTimeout": "30", "MachineDetectionSpeechThreshold": "2400",
     "MachineDetectionSpeechEndThreshold": "1200", "MachineDetectionSilenceTimeout": "5000",
     "AsyncAmdStatusCallback": "https://example.com/amd", "AsyncAmdStatusCallbackMethod": "POST"},
    {"recordingchannels": "dual", "trim": "do-not-trim"},  # their case does not matter either
])
def test_calls_without_billed_features_are_priced_as_before(extra):
    request = req("POST", CALLS, {**BARE_CALL, **extra})
    assert twilio.estimate(request, RATES) == CostEstimate(usd_micros=14_000, currency="usd")
    unbounded = req("POST", CALLS, {key: value for key, value in {**BARE_CALL, **extra}.items() if key != "TimeLimit"})
    got = twilio.estimate(unbounded, replace(RATES, max_call_minutes=30))
    assert got.usd_micros == 420_000 and got.forward_body == unbounded.body + b"&TimeLimit=1800"


def test_the_reviews_call_with_recording_and_answering_machine_detection_is_refused():
    # /tmp/review_gate: a bare call's estimate for a call that also records and detects machines.
    from keybrake_addon.pricing import Pricing

    body = ("To=%2B14155550100&From=%2B14155550199&TimeLimit=60&Twiml=%3CResponse%3E%3CSay%3Ehi%3C%2FSay%3E"
            "%3C%2FResponse%3E&Record=true&RecordingChannels=dual&MachineDetection=DetectMessageEnd&AsyncAmd=true")
    request = VendorRequest("POST", "/2010-04-01/Accounts/AC" + "0" * 32 + "/Calls.json", "",
                            {"content-type": "application/x-www-form-urlencoded"}, body.encode())
    with pytest.raises(Unpriced):
        twilio.estimate(request, Pricing().twilio)


@pytest.mark.parametrize("options, priced", [
    ({}, True),
    ({"record": False}, True),
    ({"record": True}, False),
    ({"machine_detection": "Enable"}, False),
    ({"machine_detection": "DetectMessageEnd", "async_amd": "true"}, False),
])
def test_what_twilio_python_sends_for_call_features(options, priced):
    call_json = {"sid": "CA" + "0" * 32, "status": "queued", "price": None, "price_unit": "USD"}
    http = FakeTwilioHttp(201, json.dumps(call_json).encode(), {})
    client = Client(ACCOUNT, VAULT_KEY, http_client=http)
    client.calls.create(to=US, from_="+14155550199", twiml=SAY, time_limit=60, **options)
    if priced:
        assert twilio.estimate(http.sent[0], RATES).usd_micros == 14_000
    else:
        with pytest.raises(Unpriced):
            twilio.estimate(http.sent[0], RATES)


# --- routes ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", MESSAGES),
        ("GET", f"/2010-04-01/Accounts/{ACCOUNT}/Messages/{MESSAGE_SID}.json"),
        ("HEAD", MESSAGES),
        ("DELETE", f"/2010-04-01/Accounts/{ACCOUNT}/Messages/{MESSAGE_SID}.json"),
        ("GET", f"/2010-04-01/Accounts/{ACCOUNT}/IncomingPhoneNumbers.json"),
        # Updating, redacting or cancelling a message sends nothing.
        ("POST", f"/2010-04-01/Accounts/{ACCOUNT}/Messages/{MESSAGE_SID}.json"),
    ],
)
def test_free_calls(method, path):
    assert twilio.estimate(req(method, path, {"Body": ""}), RATES) == CostEstimate()


@pytest.mark.parametrize(
    "path",
    [
        f"/2010-04-01/Accounts/{ACCOUNT}/Messages",  # no suffix: Twilio answers in XML
        f"/2010-04-01/Accounts/{ACCOUNT}/Messages.xml",
        f"/2010-04-01/accounts/{ACCOUNT}/messages.json",  # case does not dodge the price
    ],
)
def test_message_create_variants_are_priced(path):
    assert twilio.estimate(req("POST", path, {"To": US, "Body": "hi"}), RATES).usd_micros == 14_500


@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", f"/2010-04-01/Accounts/{ACCOUNT}/IncomingPhoneNumbers.json"),  # buys a number
        ("POST", f"/2010-04-01/Accounts/{ACCOUNT}/Calls/CA{'0' * 32}.json"),  # redirects a live call
        ("POST", f"/2010-04-01/Accounts/{ACCOUNT}/Messages/{MESSAGE_SID}/Feedback.json"),
        ("PUT", MESSAGES),
    ],
)
def test_other_writes_are_unpriced(method, path):
    with pytest.raises(Unpriced):
        twilio.estimate(req(method, path, {"To": US, "Body": "hi"}), RATES)


# --- credential endpoints ---------------------------------------------------------------------

KEY_SID = "SK" + "0123456789abcdef" * 2


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "DELETE", "PUT"])
@pytest.mark.parametrize(
    "path",
    [
        "/2010-04-01/Accounts",  # list or create (sub)accounts: their auth tokens
        "/2010-04-01/Accounts.json",
        "/2010-04-01/Accounts.xml",
        "/2010-04-01/Accounts/",
        f"/2010-04-01/Accounts/{ACCOUNT}",  # the Account resource carries its auth_token
        f"/2010-04-01/Accounts/{ACCOUNT}.json",
        f"/2010-04-01/Accounts/{ACCOUNT}/",
        f"/2010-04-01/accounts/{ACCOUNT}.json",
        f"/2010-04-01/Accounts/{ACCOUNT}/Keys",  # creating an API key returns its secret
        f"/2010-04-01/Accounts/{ACCOUNT}/Keys.json",
        f"/2010-04-01/Accounts/{ACCOUNT}/Keys/{KEY_SID}.json",
        f"/2010-04-01/Accounts/{ACCOUNT}/keys.json",
        f"/2010-04-01/Accounts/{ACCOUNT}/SigningKeys.json",
        f"/2010-04-01/Accounts/{ACCOUNT}/SigningKeys/{KEY_SID}",
        f"/2010-04-01/Accounts/{ACCOUNT}/Tokens.json",  # TURN server credentials
        f"/2010-04-01/Accounts/{ACCOUNT}/Tokens",
        # Another API version answers with the same secrets.
        "/2008-08-01/Accounts.json",
        f"/2008-08-01/Accounts/{ACCOUNT}.json",
        f"/2008-08-01/Accounts/{ACCOUNT}/Keys.json",
        f"/2020-01-01/Accounts/{ACCOUNT}/SigningKeys.json",
        f"/v1/Accounts/{ACCOUNT}/Tokens.json",
        f"/Accounts/{ACCOUNT}.json",  # no version at all
    ],
)
def test_credential_endpoints_are_refused_for_every_method(method, path):
    with pytest.raises(CredentialEndpoint):
        twilio.estimate(req(method, path, {"FriendlyName": "worker"}), RATES)


@pytest.mark.parametrize(
    "path",
    [
        MESSAGES,
        f"/2010-04-01/Accounts/{ACCOUNT}/Messages/{MESSAGE_SID}.json",
        f"/2010-04-01/Accounts/{ACCOUNT}/Calls.json",
        f"/2010-04-01/Accounts/{ACCOUNT}/IncomingPhoneNumbers.json",
        f"/2010-04-01/Accounts/{ACCOUNT}/KeysAndMore.json",  # not the Keys resource
    ],
)
def test_reads_next_to_credential_endpoints_stay_free(path):
    assert twilio.estimate(req("GET", path), RATES) == CostEstimate()


def test_sends_are_still_priced_beside_credential_endpoints():
    assert twilio.estimate(sms(), RATES).usd_micros == 14_500
    call = req("POST", CALLS, {"To": US, "From": "+14155550199", "TimeLimit": "60"})
    assert twilio.estimate(call, RATES).usd_micros == 14_000


# --- repeated and misplaced fields ------------------------------------------------------------

SECOND_VALUES = {"To": UK, "From": "+14155550198", "Body": "a" * 500, "MessagingServiceSid": "MG" + "1" * 32,
                 "SendAsMms": "false", "ContentSid": "HX" + "1" * 32}


@pytest.mark.parametrize("field", sorted(SECOND_VALUES))
def test_a_repeated_single_valued_message_field_is_refused(field):
    form = [("To", US), ("From", "+14155550199"), ("Body", "hi"), ("MessagingServiceSid", "MG" + "0" * 32),
            ("SendAsMms", "true"), ("ContentSid", "")]
    form.append((field, SECOND_VALUES[field]))
    with pytest.raises(MalformedRequest, match=f"'{field}' is given more than once"):
        twilio.estimate(req("POST", MESSAGES, form), RATES)


def test_a_repeated_field_is_caught_whatever_its_case():
    with pytest.raises(MalformedRequest, match="more than once"):
        twilio.estimate(req("POST", MESSAGES, [("To", US), ("to", UK), ("Body", "hi")]), RATES)


def test_a_repeated_time_limit_is_refused():
    form = [("To", US), ("From", "+14155550199"), ("TimeLimit", "60"), ("TimeLimit", "14400")]
    with pytest.raises(MalformedRequest, match="'TimeLimit' is given more than once"):
        twilio.estimate(req("POST", CALLS, form), RATES)


def test_an_empty_repeat_is_still_a_repeat():
    with pytest.raises(MalformedRequest):
        twilio.estimate(req("POST", MESSAGES, [("To", US), ("Body", ""), ("Body", "hi")]), RATES)


@pytest.mark.parametrize(
    "path, query",
    [
        (MESSAGES, {"To": UK}),
        (MESSAGES, {"Body": "a" * 500}),
        (MESSAGES, {"From": "+14155550198"}),
        (MESSAGES, {"MessagingServiceSid": "MG" + "1" * 32}),
        (MESSAGES, {"MediaUrl": "https://example.com/cat.png"}),  # would make it an MMS
        (MESSAGES, {"sendasmms": "true"}),
        (CALLS, {"TimeLimit": "14400"}),
    ],
)
def test_priced_fields_in_the_query_string_are_refused(path, query):
    form = {"To": US, "From": "+14155550199", "Body": "hi", "TimeLimit": "60"}
    with pytest.raises(MalformedRequest, match="form body, not in the query string"):
        twilio.estimate(req("POST", path, form, query=query), RATES)


def test_other_query_parameters_and_free_updates_are_left_alone():
    assert twilio.estimate(req("POST", MESSAGES, {"To": US, "Body": "hi"}, query={"Page": "0"}), RATES).usd_micros \
        == 14_500
    redaction = req("POST", f"/2010-04-01/Accounts/{ACCOUNT}/Messages/{MESSAGE_SID}.json",
                    [("Body", ""), ("Body", "")], query={"Body": ""})
    assert twilio.estimate(redaction, RATES) == CostEstimate()


# --- credentials and accounts -------------------------------------------------------------

@pytest.mark.parametrize(
    "headers, expected",
    [
        (basic(ACCOUNT, VAULT_KEY), PresentedCredential(token=VAULT_KEY)),
        (basic(API_KEY_SID, VAULT_KEY), PresentedCredential(token=VAULT_KEY)),
        (basic("", VAULT_KEY), PresentedCredential(token=VAULT_KEY)),
        ({"authorization": "basic " + base64.b64encode(b"AC1:pw:with:colons").decode()},
         PresentedCredential(token="pw:with:colons")),
        ({}, None),
        ({"authorization": ""}, None),
        ({"authorization": f"Bearer {VAULT_KEY}"}, None),  # Twilio's REST API takes Basic auth
        (basic(ACCOUNT, ""), None),  # no password
        ({"authorization": "Basic " + base64.b64encode(ACCOUNT.encode()).decode()}, None),  # no colon
        ({"authorization": "Basic not*base64"}, None),
        ({"authorization": "Basic " + base64.b64encode(b"AC1:\xff\xfe").decode()}, None),  # not UTF-8
        ({"authorization": "Basic"}, None),
    ],
)
def test_presented_credential(headers, expected):
    assert twilio.presented_credential(headers) == expected


@pytest.mark.parametrize(
    "token, real",
    [
        ("0123456789abcdef" * 2, True),  # an auth token: 32 lowercase hex
        ("AbCdEfGhIjKlMnOpQrStUvWxYz012345", True),  # an API key secret: 32 alphanumerics
        (VAULT_KEY, False),
        ("0123456789abcdef" * 2 + "0", False),
        ("0123456789abcdef0123456789abcde", False),
        ("0123456789abcdef_123456789abcdef", False),
    ],
)
def test_looks_like_real_secret(token, real):
    assert twilio.looks_like_real_secret(token) is real


def test_vault_keys_are_not_taken_for_real_secrets():
    assert VAULT_KEY.startswith("kb_") and len(VAULT_KEY) == 46
    assert not twilio.looks_like_real_secret(VAULT_KEY)


def test_authorization_header_is_basic_with_the_secrets_own_user():
    header = twilio.authorization_header("s3cret", API_KEY_SID)
    assert header == "Basic " + base64.b64encode(f"{API_KEY_SID}:s3cret".encode()).decode()
    assert twilio.presented_credential({"authorization": header}) == PresentedCredential("s3cret")
    with pytest.raises(ValueError):
        twilio.authorization_header("s3cret", None)


@pytest.mark.parametrize(
    "path, account",
    [
        (MESSAGES, ACCOUNT),
        (f"/2010-04-01/Accounts/{ACCOUNT}/Calls/CA{'0' * 32}.json", ACCOUNT),
        (f"/2010-04-01/Accounts/{ACCOUNT}.json", ACCOUNT),
        (f"/2010-04-01/Accounts/{ACCOUNT}", ACCOUNT),
        (f"/2010-04-01/accounts/{ACCOUNT}/messages.json", ACCOUNT),
        ("/2010-04-01/Accounts.json", None),
        ("/", None),
        # Any version prefix names an account just as well: the gate must check it.
        (f"/2008-08-01/Accounts/{ACCOUNT}/SMS/Messages.json", ACCOUNT),
        (f"/2020-01-01/Accounts/{ACCOUNT}/Calls.json", ACCOUNT),
        (f"/Accounts/{ACCOUNT}/Calls.json", ACCOUNT),
    ],
)
def test_account_ref_is_the_account_in_the_path(path, account):
    assert twilio.account_ref(req("GET", path)) == account


def test_no_idempotency_key():
    assert twilio.idempotency_key({"idempotency-key": "abc", "i-twilio-idempotency-token": "x"}) is None


# --- outcomes -------------------------------------------------------------------------------

def message_json(price, price_unit="USD", sid=MESSAGE_SID) -> dict:
    return {"sid": sid, "account_sid": ACCOUNT, "status": "queued", "num_segments": "1",
            "price": price, "price_unit": price_unit}


@pytest.mark.parametrize(
    "price, unit, usd_micros",
    [
        ("-0.00790", "USD", 7_900),
        ("-0.0079", "usd", 7_900),
        ("-0.00000001", "USD", 1),  # rounded up, never down
        ("0.0145", "USD", 14_500),
        (None, "USD", None),  # not rated yet: the ledger keeps the estimate
        (None, None, None),
        ("-0.05", "EUR", None),  # not USD: keep the estimate
        ("not a price", "USD", None),
    ],
)
def test_message_outcome_price(price, unit, usd_micros):
    got = twilio.outcome(sms(), resp(201, message_json(price, unit), {"twilio-request-id": "RQ123"}), RATES)
    assert got == Outcome(usd_micros=usd_micros, object_ids=(MESSAGE_SID,), vendor_request_id="RQ123")


def test_call_outcome():
    call_sid = "CA" + "1" * 32
    body = {"sid": call_sid, "status": "queued", "price": None, "price_unit": "USD"}
    assert twilio.outcome(req("POST", CALLS), resp(201, body), RATES) == Outcome(None, (call_sid,))
    body["price"] = "-0.02800"
    assert twilio.outcome(req("POST", CALLS), resp(201, body), RATES).usd_micros == 28_000


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", f"/2010-04-01/Accounts/{ACCOUNT}/Messages/{MESSAGE_SID}.json"),
        ("POST", f"/2010-04-01/Accounts/{ACCOUNT}/Messages/{MESSAGE_SID}.json"),  # redaction
    ],
)
def test_reading_or_updating_a_rated_message_costs_nothing(method, path):
    got = twilio.outcome(req(method, path), resp(200, message_json("-0.00790")), RATES)
    assert got == Outcome(usd_micros=0, object_ids=(MESSAGE_SID,))


def test_error_and_non_json_outcomes_keep_the_hold():
    error = {"code": 21211, "message": "The 'To' number is not a valid phone number.", "status": 400}
    got = twilio.outcome(sms(), resp(400, error, {"twilio-request-id": "RQ9"}), RATES)
    assert got == Outcome(usd_micros=None, vendor_request_id="RQ9")
    assert twilio.outcome(sms(), resp(201, b"<TwilioResponse/>"), RATES) == Outcome(usd_micros=None)
    assert twilio.outcome(sms(), resp(500, b""), RATES) == Outcome(usd_micros=None)




# --- refusals -------------------------------------------------------------------------------

TWILIO_CODES = {401: 20003, 403: 20006, 400: 400, 429: 20429, 503: 20503}


@pytest.mark.parametrize("kind", list(RefusalKind))
def test_render_refusal_shape(kind):
    rendered = twilio.render_refusal(Refusal(kind, f"Keybrake says no ({kind.code})."))
    body = json.loads(rendered.body)
    assert rendered.status == kind.status
    assert body == {
        "code": TWILIO_CODES[kind.status],
        "message": f"Keybrake says no ({kind.code}).",
        "more_info": "https://github.com/keybrake/keybrake#refusals",
        "status": kind.status,
        "keybrake_code": kind.code,
        "details": {"keybrake_code": kind.code},
    }
    assert rendered.headers["content-type"] == "application/json"
    assert rendered.headers["x-keybrake-refusal"] == kind.code
    assert ("x-keybrake-cap-hit" in rendered.headers) is kind.is_cap_hit
    assert "retry-after" not in rendered.headers


def test_render_refusal_cap_hit_and_retry_after_headers():
    rendered = twilio.render_refusal(Refusal(RefusalKind.CAP_EXCEEDED, "cap", retry_after_s=30))
    assert rendered.headers["x-keybrake-cap-hit"] == "true"
    assert rendered.headers["retry-after"] == "30"
    unavailable = twilio.render_refusal(Refusal(RefusalKind.UNAVAILABLE, "down", retry_after_s=2))
    assert unavailable.headers["retry-after"] == "2"
    assert "x-keybrake-cap-hit" not in unavailable.headers


@pytest.mark.parametrize("kind", list(RefusalKind))
def test_twilio_sdk_error_factory_reads_our_body(kind):
    """twilio-python's Version.exception is what every create/fetch/update raises from."""
    rendered = twilio.render_refusal(Refusal(kind, "Keybrake cap reached for vault key kbk_1."))
    response = TwilioResponse(rendered.status, rendered.body.decode(), rendered.headers)
    error = Version.exception("POST", "/Accounts/AC1/Messages.json", response, "Unable to create record")
    assert type(error) is TwilioRestException  # not TwilioServiceException (RFC 9457 shape)
    assert error.status == kind.status
    assert error.code == TWILIO_CODES[kind.status]
    assert error.msg == "Unable to create record: Keybrake cap reached for vault key kbk_1."
    assert error.details == {"keybrake_code": kind.code}


class FakeTwilioHttp(HttpClient):
    """The SDK's HTTP seam: records what the SDK sends and answers with a canned response."""

    def __init__(self, status: int, body: bytes, headers: dict) -> None:
        super().__init__(logging.getLogger("test"), is_async=False)
        self.answer = TwilioResponse(status, body.decode(), headers)
        self.sent: list[VendorRequest] = []

    def request(self, method, uri, params=None, data=None, headers=None, auth=None, timeout=None,
                allow_redirects=False):
        lowered = {name.lower(): value for name, value in (headers or {}).items()}
        lowered.update(basic(*auth))  # requests turns the (user, password) tuple into this header
        self.sent.append(VendorRequest(method, urlsplit(uri).path, urlsplit(uri).query, lowered,
                                       urlencode(data or {}, doseq=True).encode()))
        return self.answer


def test_twilio_sdk_request_is_read_and_our_refusal_is_raised_with_our_message():
    refusal = twilio.render_refusal(Refusal(RefusalKind.CAP_EXCEEDED, "Keybrake cap reached.", retry_after_s=60))
    http = FakeTwilioHttp(refusal.status, refusal.body, refusal.headers)
    client = Client(API_KEY_SID, VAULT_KEY, ACCOUNT, http_client=http)
    with pytest.raises(TwilioRestException) as raised:
        client.messages.create(to=US, from_="+14155550199", body="a" * 161)
    assert raised.value.status == 429
    assert raised.value.code == 20429
    assert "Keybrake cap reached." in raised.value.msg
    # What the SDK sent is what the gate reads.
    sent = http.sent[0]
    assert sent.method == "POST" and sent.path == MESSAGES
    assert twilio.presented_credential(sent.headers) == PresentedCredential(VAULT_KEY)
    assert twilio.account_ref(sent) == ACCOUNT
    assert twilio.estimate(sent, RATES).usd_micros == 29_000  # 2 segments


def test_twilio_sdk_mms_with_several_media_urls_is_one_mms():
    http = FakeTwilioHttp(201, json.dumps(message_json(None, sid="MM" + "0" * 32)).encode(), {})
    client = Client(ACCOUNT, VAULT_KEY, http_client=http)
    message = client.messages.create(to=US, from_="+14155550199",
                                     media_url=["https://example.com/1.png", "https://example.com/2.png"])
    assert message.sid == "MM" + "0" * 32
    assert twilio.estimate(http.sent[0], RATES).usd_micros == 32_000  # MMS + carrier fee, once


@pytest.mark.parametrize("to", ["+18765551234", "+18095551234", "+12425551234"])
def test_caribbean_plus_one_numbers_are_not_priced_as_the_us(to):
    with pytest.raises(Unpriced) as refused:
        twilio.estimate(req("POST", MESSAGES, {"To": to, "Body": "hi"}), RATES)
    assert f"sms_usd_per_segment.{to[1:5]}" in str(refused.value)


def test_a_caribbean_code_with_its_own_rate_is_priced():
    rates = replace(RATES, sms_usd_per_segment={**RATES.sms_usd_per_segment, "1876": Decimal("0.10")})
    estimate = twilio.estimate(req("POST", MESSAGES, {"To": "+18765551234", "Body": "hi"}), rates)
    assert estimate.usd_micros == 100_000  # its own rate; US carrier fees are not Jamaica's


def test_puerto_rico_is_priced_as_the_us():
    estimate = twilio.estimate(req("POST", MESSAGES, {"To": "+17875551234", "Body": "hi"}), RATES)
    assert estimate.usd_micros == 14_500
