"""The pricing file (`pricing.json` in the Keybrake home): rates Keybrake cannot learn from a request.

Today it holds the USD rates used to convert Stripe amounts in other currencies. A missing
file means the shipped defaults; a malformed one is an error that names the field.
"""

import json
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

from .vendors.currency import DEFAULT_USD_RATES


class PricingError(ValueError):
    pass


@dataclass(frozen=True)
class Pricing:
    usd_rates: dict[str, Decimal] = field(default_factory=lambda: dict(DEFAULT_USD_RATES))


def load_pricing(path: Path) -> Pricing:
    if not path.exists():
        return Pricing()
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise PricingError(f"{path}: not valid JSON at line {error.lineno}, column {error.colno}: {error.msg}") from None
    if not isinstance(document, dict):
        raise PricingError(f"{path}: the top level must be an object")
    rates = dict(DEFAULT_USD_RATES)
    overrides = document.get("currency_usd_rates", {})
    if not isinstance(overrides, dict):
        raise PricingError(f"{path}: currency_usd_rates must be an object of CODE: rate")
    for code, raw in overrides.items():
        try:
            rate = Decimal(str(raw))
        except InvalidOperation:
            raise PricingError(f"{path}: currency_usd_rates.{code} is not a number: {raw!r}") from None
        if not rate.is_finite() or rate <= 0 or not (isinstance(code, str) and len(code) == 3 and code.isalpha()):
            raise PricingError(f"{path}: currency_usd_rates.{code} must be a positive rate for a 3-letter code")
        rates[code.upper()] = rate
    return Pricing(usd_rates=rates)
