"""The pricing file: defaults when absent, partial overrides, and errors that name the field."""

import json
import re
from decimal import Decimal

import pytest

from keybrake_addon.pricing import Pricing, PricingError, ResendRates, TwilioRates, load_pricing, pricing_from_document


def write(tmp_path, text: str):
    path = tmp_path / "pricing.json"
    path.write_text(text)
    return path


# --- loading -----------------------------------------------------------------------------------

def test_a_missing_file_means_the_shipped_defaults(tmp_path):
    pricing = load_pricing(tmp_path / "pricing.json")
    assert pricing == Pricing()
    assert pricing.twilio.sms_usd_per_segment == {"1": Decimal("0.0083")}
    assert pricing.twilio.mms_carrier_fee_usd_per_message == {"1": Decimal("0.0100")}
    assert pricing.resend.usd_per_email == Decimal("0.0009")


def test_a_file_overrides_only_what_it_sets(tmp_path):
    path = write(tmp_path, json.dumps({
        "currency_usd_rates": {"eur": "1.2"},
        "twilio": {"sms_usd_per_segment": {"44": "0.0524"}, "mms_carrier_fee_usd_per_message": {"1": 0.005},
                   "default_voice_usd_per_minute": "0.1", "max_call_minutes": 30,
                   "allow_call_url": True},
        "resend": {"usd_per_email": "0.00065"},
    }))
    pricing = load_pricing(path)
    assert pricing.usd_rates["EUR"] == Decimal("1.2")  # the code is upper-cased
    assert pricing.usd_rates["JPY"] == Pricing().usd_rates["JPY"]  # other currencies keep their default
    assert pricing.twilio.sms_usd_per_segment == {"1": Decimal("0.0083"), "44": Decimal("0.0524")}
    assert pricing.twilio.mms_carrier_fee_usd_per_message == {"1": Decimal("0.005")}
    assert pricing.twilio.carrier_fee_usd_per_segment == TwilioRates().carrier_fee_usd_per_segment
    assert pricing.twilio.default_voice_usd_per_minute == Decimal("0.1")
    assert pricing.twilio.default_sms_usd_per_segment is None
    assert pricing.twilio.max_call_minutes == 30
    assert pricing.twilio.allow_call_url is True
    assert TwilioRates().allow_call_url is False
    assert pricing.resend == ResendRates(usd_per_email=Decimal("0.00065"))


def test_an_empty_object_is_the_defaults():
    assert pricing_from_document({}) == Pricing()


def test_malformed_json_names_the_file_line_and_column(tmp_path):
    path = write(tmp_path, '{\n  "resend": {"usd_per_email": 0.0009,}\n}\n')
    with pytest.raises(PricingError) as raised:
        load_pricing(path)
    message = str(raised.value)
    assert str(path) in message
    # Python 3.13 points at the trailing comma (column 37), 3.12 at the `}` after it (38).
    assert re.search(r"line 2, column 3[78]\b", message)


def test_a_bad_field_in_a_file_is_prefixed_with_the_file(tmp_path):
    path = write(tmp_path, json.dumps({"twilio": {"sms_usd_per_segment": {"44": "cheap"}}}))
    with pytest.raises(PricingError) as raised:
        load_pricing(path)
    assert str(raised.value).startswith(f"{path}: twilio.sms_usd_per_segment.44: not a number")


# --- validation ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "document, names",
    [
        ([], "the top level: expected an object"),
        ({"stripe": {}}, "the top level: unknown field 'stripe'"),
        ({"twilio": {"sms_rate": {"1": "0.01"}}}, "twilio: unknown field 'sms_rate'"),
        ({"twilio": {"mms_carrier_fee_usd_per_segment": {"1": "0.01"}}},
         "twilio: unknown field 'mms_carrier_fee_usd_per_segment'"),
        ({"resend": {"usd_per_mail": "0.001"}}, "resend: unknown field 'usd_per_mail'"),
        ({"twilio": []}, "twilio: expected an object, got list"),
        ({"twilio": {"sms_usd_per_segment": "0.0083"}}, "twilio.sms_usd_per_segment: expected an object, got str"),
        ({"twilio": {"mms_carrier_fee_usd_per_message": {"1": True}}},
         "twilio.mms_carrier_fee_usd_per_message.1: expected a number"),
        ({"twilio": {"carrier_fee_usd_per_segment": {"+1": "0.0062"}}},
         "twilio.carrier_fee_usd_per_segment.+1: keys are country calling codes"),
        ({"twilio": {"voice_usd_per_minute": {"1": "-0.01"}}},
         "twilio.voice_usd_per_minute.1: must be a positive number"),
        ({"twilio": {"default_sms_usd_per_segment": "NaN"}}, "twilio.default_sms_usd_per_segment: must be a positive"),
        ({"twilio": {"max_call_minutes": 0}}, "twilio.max_call_minutes: a whole number of minutes above 0"),
        ({"twilio": {"max_call_minutes": 1.5}}, "twilio.max_call_minutes: a whole number of minutes above 0"),
        ({"twilio": {"max_call_minutes": True}}, "twilio.max_call_minutes: a whole number of minutes above 0"),
        ({"twilio": {"allow_call_url": "yes"}}, "twilio.allow_call_url: true or false"),
        ({"twilio": {"allow_call_url": 1}}, "twilio.allow_call_url: true or false"),
        ({"resend": {"usd_per_email": None}}, "resend.usd_per_email: expected a number"),
        ({"currency_usd_rates": {"EURO": "1.1"}}, "currency_usd_rates.EURO: a currency is a 3-letter code"),
        ({"currency_usd_rates": {"EUR": 0}}, "currency_usd_rates.EUR: must be a positive number"),
    ],
)
def test_errors_name_the_field(document, names):
    with pytest.raises(PricingError) as raised:
        pricing_from_document(document)
    assert str(raised.value).startswith(names)


def test_zero_vendor_rates_are_accepted():
    # A free tier or a country with no carrier fee is a real price of 0; only currencies refuse it.
    pricing = pricing_from_document({
        "twilio": {"sms_usd_per_segment": {"1": 0}, "carrier_fee_usd_per_segment": {"1": "0"},
                   "mms_carrier_fee_usd_per_message": {"1": 0}, "default_mms_usd_per_message": 0},
        "resend": {"usd_per_email": "0"},
    })
    assert pricing.twilio.sms_usd_per_segment["1"] == 0
    assert pricing.twilio.mms_carrier_fee_usd_per_message["1"] == 0
    assert pricing.twilio.default_mms_usd_per_message == 0
    assert pricing.resend.usd_per_email == 0


# --- the effective document ------------------------------------------------------------------------

def test_the_effective_document_lists_every_field_and_reads_back_the_same():
    document = Pricing().to_document()
    assert document["twilio"]["mms_carrier_fee_usd_per_message"] == {"1": "0.0100"}
    assert document["resend"] == {"usd_per_email": "0.0009"}
    assert pricing_from_document(document) == Pricing()


def test_for_vendor_hands_each_vendor_its_part():
    pricing = Pricing()
    assert pricing.for_vendor("twilio") is pricing.twilio
    assert pricing.for_vendor("resend") is pricing.resend
    assert pricing.for_vendor("stripe") is pricing.usd_rates
