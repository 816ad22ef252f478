"""Convert vendor amounts in a currency's smallest unit into USD micros.

Rounding is always up: the ledger may over-count by a fraction of a micro-dollar, never under.
"""

from collections.abc import Mapping
from decimal import ROUND_CEILING, Decimal

from ..money import MICROS_PER_USD
from .base import UnknownCurrency

# Stripe's lists (its docs, "Zero-decimal currencies" and "Three-decimal currencies"). ISK is
# zero-decimal in life but Stripe sends it x100, so for API amounts it behaves like a
# two-decimal currency and needs no entry here.
ZERO_DECIMAL = frozenset(
    "BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split()
)
THREE_DECIMAL = frozenset("BHD JOD KWD OMR TND".split())

# USD per one unit of the currency. Approximate mid-market figures from late 2026, rounded up
# so that conversion over-estimates; users with real exposure in a currency should set their own.
DEFAULT_USD_RATES: dict[str, Decimal] = {
    code: Decimal(rate)
    for code, rate in {
        "USD": "1",
        "EUR": "1.18",
        "GBP": "1.36",
        "CAD": "0.74",
        "AUD": "0.67",
        "NZD": "0.60",
        "CHF": "1.27",
        "SEK": "0.11",
        "NOK": "0.10",
        "DKK": "0.16",
        "PLN": "0.28",
        "CZK": "0.05",
        "HUF": "0.0031",
        "JPY": "0.0070",
        "KRW": "0.00075",
        "INR": "0.012",
        "SGD": "0.79",
        "HKD": "0.13",
        "MXN": "0.056",
        "BRL": "0.19",
        "ZAR": "0.058",
        "AED": "0.28",
        "KWD": "3.30",
        "BHD": "2.66",
        "JOD": "1.42",
        "OMR": "2.61",
        "TND": "0.35",
        "ISK": "0.0082",
        "CLP": "0.0011",
        "VND": "0.000040",
    }.items()
}


def minor_unit_exponent(currency: str) -> int:
    code = currency.upper()
    if code in ZERO_DECIMAL:
        return 0
    if code in THREE_DECIMAL:
        return 3
    return 2


def minor_to_usd_micros(amount_minor: int, currency: str, usd_rates: Mapping[str, Decimal]) -> int:
    code = currency.upper()
    rate = usd_rates.get(code)
    if rate is None:
        raise UnknownCurrency(
            f"no USD rate is configured for currency {code!r}; add one to the pricing file"
        )
    major = Decimal(amount_minor) / (Decimal(10) ** minor_unit_exponent(code))
    return int((major * rate * MICROS_PER_USD).to_integral_value(rounding=ROUND_CEILING))
