"""Money as integer micro-dollars (1 USD = 1,000,000 micros).

Integers keep cap arithmetic exact: a $500.00 cap admits exactly ten $50.00 charges, never
nine because of a float rounding error.
"""

from decimal import ROUND_CEILING, Decimal, InvalidOperation

MICROS_PER_USD = 1_000_000


class InvalidAmount(ValueError):
    pass


LARGEST_USD = 1_000_000_000


def usd_to_micros(value: str | int | Decimal) -> int:
    """Parse a user-given dollar amount ("500", "12.50") into micros, refusing negatives."""
    try:
        amount = Decimal(str(value).strip().lstrip("$"))
    except InvalidOperation:
        raise InvalidAmount(f"not a dollar amount: {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise InvalidAmount(f"a dollar amount must be zero or positive: {value!r}")
    if amount > LARGEST_USD:
        raise InvalidAmount(f"at most ${LARGEST_USD:,} (the ledger's integers must not overflow): {value!r}")
    return int((amount * MICROS_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def micros_to_decimal(micros: int) -> Decimal:
    return Decimal(micros) / MICROS_PER_USD


def format_usd(micros: int | None) -> str:
    """Cents for normal amounts; more digits only when sub-cent prices (SMS, email) need them."""
    if micros is None:
        return "-"
    value = micros_to_decimal(micros)
    if micros % 10_000 == 0:
        return f"{value:.2f}"
    return f"{value.normalize():f}"
