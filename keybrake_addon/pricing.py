"""The pricing file (`pricing.json` in the Keybrake home): the rates a request cannot tell.

It holds USD rates for Stripe's other currencies, Twilio's per-country SMS, MMS and voice
rates, and Resend's per-email rate. A missing file means the shipped defaults; a file may set
only what it changes. A malformed file is an error that names the field, never a silent 0.
"""

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

from .vendors.currency import DEFAULT_USD_RATES


class PricingError(ValueError):
    pass


def _d(table: Mapping[str, str]) -> dict[str, Decimal]:
    return {key: Decimal(value) for key, value in table.items()}


@dataclass(frozen=True)
class TwilioRates:
    """Twilio list prices in USD, keyed by the destination's country calling code ("1", "44").

    Defaults: Twilio's published US/CA prices (SMS $0.0083 per segment, MMS $0.0220 per
    message, outbound voice $0.0140 per minute; 2026) and the highest US carrier fees seen
    ($0.0062 per SMS segment; $0.0100 per MMS, T-Mobile's and US Cellular's). Carriers charge
    SMS fees per segment and MMS fees per message, and Twilio passes both through. Other
    countries have no default, so they are refused until priced: set
    `default_sms_usd_per_segment` to accept any destination at one rate.
    """

    sms_usd_per_segment: dict[str, Decimal] = field(default_factory=lambda: _d({"1": "0.0083"}))
    default_sms_usd_per_segment: Decimal | None = None
    carrier_fee_usd_per_segment: dict[str, Decimal] = field(default_factory=lambda: _d({"1": "0.0062"}))
    mms_usd_per_message: dict[str, Decimal] = field(default_factory=lambda: _d({"1": "0.0220"}))
    mms_carrier_fee_usd_per_message: dict[str, Decimal] = field(default_factory=lambda: _d({"1": "0.0100"}))
    default_mms_usd_per_message: Decimal | None = None
    voice_usd_per_minute: dict[str, Decimal] = field(default_factory=lambda: _d({"1": "0.0140"}))
    default_voice_usd_per_minute: Decimal | None = None
    max_call_minutes: int | None = None  # bound for calls that set no TimeLimit
    # Calls whose TwiML Twilio fetches later (Url, ApplicationSid, FallbackUrl) may dial further
    # billed legs Keybrake never sees: forwarded only when the operator accepts that.
    allow_call_url: bool = False


@dataclass(frozen=True)
class ResendRates:
    """Default: the Pro plan's overage rate, $0.90 per 1,000 emails (2026), the marginal cost."""

    usd_per_email: Decimal = Decimal("0.0009")


@dataclass(frozen=True)
class Pricing:
    usd_rates: dict[str, Decimal] = field(default_factory=lambda: dict(DEFAULT_USD_RATES))
    twilio: TwilioRates = field(default_factory=TwilioRates)
    resend: ResendRates = field(default_factory=ResendRates)

    def for_vendor(self, vendor: str):
        """The part of the pricing a vendor module's estimate and outcome take."""
        return {"stripe": self.usd_rates, "twilio": self.twilio, "resend": self.resend}[vendor]

    def to_document(self) -> dict:
        """The effective pricing as JSON-ready data (decimals as strings)."""
        return json.loads(json.dumps({"currency_usd_rates": self.usd_rates, "twilio": asdict(self.twilio),
                                      "resend": asdict(self.resend)}, default=str))


def load_pricing(path: Path) -> Pricing:
    if not path.exists():
        return Pricing()
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise PricingError(f"{path}: not valid JSON at line {error.lineno}, column {error.colno}: {error.msg}") from None
    try:
        return pricing_from_document(document)
    except PricingError as error:
        raise PricingError(f"{path}: {error}") from None


def pricing_from_document(document) -> Pricing:
    _expect_object(document, "the top level", {"currency_usd_rates", "twilio", "resend"})
    usd_rates = dict(DEFAULT_USD_RATES)
    for code, raw in _object(document, "currency_usd_rates").items():
        if not (isinstance(code, str) and len(code) == 3 and code.isalpha()):
            raise PricingError(f"currency_usd_rates.{code}: a currency is a 3-letter code")
        usd_rates[code.upper()] = _rate(raw, f"currency_usd_rates.{code}")
    return Pricing(usd_rates=usd_rates, twilio=_twilio(_object(document, "twilio")),
                   resend=_resend(_object(document, "resend")))


def _twilio(section: dict) -> TwilioRates:
    defaults = TwilioRates()
    _expect_object(section, "twilio", set(asdict(defaults)))
    values = {}
    for name in ("sms_usd_per_segment", "carrier_fee_usd_per_segment", "mms_usd_per_message",
                 "mms_carrier_fee_usd_per_message", "voice_usd_per_minute"):
        table = dict(getattr(defaults, name))
        for code, raw in _object(section, name, f"twilio.{name}").items():
            if not (isinstance(code, str) and code.isdigit() and 1 <= len(code) <= 4):
                raise PricingError(f"twilio.{name}.{code}: keys are country calling codes like \"1\" or \"44\"")
            table[code] = _rate(raw, f"twilio.{name}.{code}", allow_zero=True)
        values[name] = table
    for name in ("default_sms_usd_per_segment", "default_mms_usd_per_message", "default_voice_usd_per_minute"):
        raw = section.get(name)
        values[name] = None if raw is None else _rate(raw, f"twilio.{name}", allow_zero=True)
    minutes = section.get("max_call_minutes")
    if minutes is not None and not (isinstance(minutes, int) and not isinstance(minutes, bool) and minutes > 0):
        raise PricingError(f"twilio.max_call_minutes: a whole number of minutes above 0, or null; got {minutes!r}")
    allow_call_url = section.get("allow_call_url", False)
    if not isinstance(allow_call_url, bool):
        raise PricingError(f"twilio.allow_call_url: true or false; got {allow_call_url!r}")
    return TwilioRates(**values, max_call_minutes=minutes, allow_call_url=allow_call_url)


def _resend(section: dict) -> ResendRates:
    _expect_object(section, "resend", {"usd_per_email"})
    if "usd_per_email" not in section:
        return ResendRates()
    return ResendRates(usd_per_email=_rate(section["usd_per_email"], "resend.usd_per_email", allow_zero=True))


def _object(document: dict, name: str, where: str | None = None) -> dict:
    value = document.get(name, {})
    if not isinstance(value, dict):
        raise PricingError(f"{where or name}: expected an object, got {type(value).__name__}")
    return value


def _expect_object(value, where: str, known: set[str]) -> None:
    if not isinstance(value, dict):
        raise PricingError(f"{where}: expected an object")
    unknown = sorted(set(value) - known)
    if unknown:
        raise PricingError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")


def _rate(raw, where: str, *, allow_zero: bool = False) -> Decimal:
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise PricingError(f"{where}: expected a number, got {raw!r}")
    try:
        rate = Decimal(str(raw))
    except InvalidOperation:
        raise PricingError(f"{where}: not a number: {raw!r}") from None
    if not rate.is_finite() or rate < 0 or (rate == 0 and not allow_zero):
        raise PricingError(f"{where}: must be a positive number, got {raw!r}")
    return rate
