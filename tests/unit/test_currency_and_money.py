"""Currency conversion to USD micros and the money helpers."""

from decimal import Decimal

import pytest

from keybrake_addon.money import InvalidAmount, format_usd, micros_to_decimal, usd_to_micros
from keybrake_addon.vendors.base import Unpriced, UnknownCurrency
from keybrake_addon.vendors.currency import DEFAULT_USD_RATES, minor_to_usd_micros, minor_unit_exponent


@pytest.mark.parametrize(
    "currency, exponent",
    [
        ("usd", 2), ("EUR", 2), ("gbp", 2), ("ISK", 2), ("HUF", 2),
        ("jpy", 0), ("KRW", 0), ("vnd", 0), ("CLP", 0), ("XOF", 0),
        ("kwd", 3), ("BHD", 3), ("JOD", 3), ("omr", 3), ("TND", 3),
    ],
)
def test_minor_unit_exponent(currency, exponent):
    assert minor_unit_exponent(currency) == exponent


@pytest.mark.parametrize(
    "amount, currency, micros",
    [
        (5000, "usd", 50_000_000),
        (1, "usd", 10_000),  # one cent
        (0, "usd", 0),
        (100, "EUR", 1_180_000),  # 1.00 EUR * 1.18
        (1000, "jpy", 7_000_000),  # 1000 yen * 0.0070
        (1, "jpy", 7_000),
        (1, "krw", 750),  # 1 won * 0.00075
        (1, "vnd", 40),  # 1 dong * 0.000040
        (1000, "kwd", 3_300_000),  # 1.000 KWD * 3.30
        (1, "kwd", 3_300),  # 0.001 KWD
        (100, "isk", 8_200),  # Stripe sends ISK x100: 1 ISK * 0.0082
        (3, "huf", 93),  # 0.03 HUF * 0.0031 = 0.000093 USD
    ],
)
def test_minor_to_usd_micros_default_rates(amount, currency, micros):
    assert minor_to_usd_micros(amount, currency, DEFAULT_USD_RATES) == micros


@pytest.mark.parametrize(
    "amount, currency, rate, micros",
    [
        (1, "usd", "1.0000001", 10_001),  # 10000.001 -> up
        (1, "jpy", "0.0000015", 2),  # 1.5 micros -> 2
        (1, "jpy", "0.0000010001", 2),  # 1.0001 micros -> 2, never 1
        (3, "jpy", "0.000001", 3),  # exact stays exact
        (1, "kwd", "0.0000001", 1),  # 0.0001 micros -> 1
    ],
)
def test_minor_to_usd_micros_rounds_up(amount, currency, rate, micros):
    assert minor_to_usd_micros(amount, currency, {currency.upper(): Decimal(rate)}) == micros


def test_unknown_currency_is_unpriced_and_names_the_code():
    with pytest.raises(UnknownCurrency) as info:
        minor_to_usd_micros(100, "xyz", DEFAULT_USD_RATES)
    assert isinstance(info.value, Unpriced)
    assert "'XYZ'" in str(info.value)


# --- money ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "value, micros",
    [
        ("500", 500_000_000),
        ("12.50", 12_500_000),
        ("$12.50", 12_500_000),
        (" 7 ", 7_000_000),
        ("0.005", 5_000),
        ("0", 0),
        ("0.0000001", 1),  # a tenth of a micro rounds up to one micro
        (3, 3_000_000),
        (Decimal("0.25"), 250_000),
    ],
)
def test_usd_to_micros(value, micros):
    assert usd_to_micros(value) == micros


@pytest.mark.parametrize("value", ["-1", "-0.01", "abc", "", "NaN", "Infinity", "1.2.3"])
def test_usd_to_micros_rejects(value):
    with pytest.raises(InvalidAmount):
        usd_to_micros(value)


@pytest.mark.parametrize(
    "micros, text",
    [
        (50_000_000, "50.00"),
        (0, "0.00"),
        (10_000, "0.01"),
        (1_230_000, "1.23"),
        (8_300, "0.0083"),
        (1_234_000, "1.234"),
        (1, "0.000001"),
        (500_000_000_000, "500000.00"),
        (None, "-"),
    ],
)
def test_format_usd(micros, text):
    assert format_usd(micros) == text


def test_micros_to_decimal():
    assert micros_to_decimal(12_500_000) == Decimal("12.5")
