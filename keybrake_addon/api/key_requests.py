"""Reading a POST /vault/keys body into a KeyRequest, naming the field of the first problem."""

from ..money import InvalidAmount, usd_to_micros
from ..vault.issuance import KeyRequest

FIELDS = {
    "vendor": str, "secret": str, "daily_usd_cap": "usd", "total_usd_cap": "usd", "max_calls": int,
    "allowed_endpoints": list, "allow_all": bool, "no_cap": bool, "allow_unpriced": bool, "expires_in": str,
    "label": str, "agent_run_label": str, "budget": str, "stripe_account": str,
}


LARGEST_COUNT = 10**12  # SQLite stores 64-bit integers; anything near that is a typo


class InvalidField(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ConflictingFields(InvalidField):
    """Each field fits the description, together they do not: a rule the description cannot state (422)."""


def key_request_from_json(document) -> KeyRequest:
    if not isinstance(document, dict):
        raise InvalidField("body", "expected a JSON object")
    for name in document:
        if name not in FIELDS:
            raise InvalidField(name, f"unknown field (known: {', '.join(FIELDS)})")
    if document.get("vendor") is None:
        raise InvalidField("vendor", "required")
    values = {name: _check(name, value) for name, value in document.items() if value is not None}
    # `label` is the name answers and filters use; `agent_run_label`, its older name, still works.
    if "label" in values and "agent_run_label" in values and values["label"] != values["agent_run_label"]:
        raise ConflictingFields("label", "give label or agent_run_label (its older name), not two different labels")
    return KeyRequest(
        vendor=values["vendor"],
        secret_name=values.get("secret", "default"),
        label=values.get("label", values.get("agent_run_label")),
        daily_cap_micros=values.get("daily_usd_cap"),
        total_cap_micros=values.get("total_usd_cap"),
        max_calls=values.get("max_calls"),
        allowlist=tuple(values.get("allowed_endpoints", ())),
        allow_all=values.get("allow_all", False),
        no_cap=values.get("no_cap", False),
        allow_unpriced=values.get("allow_unpriced", False),
        expires_in=values.get("expires_in"),
        budget=values.get("budget"),
        stripe_account=values.get("stripe_account"),
    )


def _check(name: str, value):
    kind = FIELDS[name]
    if kind == "usd":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise InvalidField(name, "expected a dollar amount")
        try:
            return usd_to_micros(value)
        except InvalidAmount as failure:
            raise InvalidField(name, str(failure)) from None
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON has one number type: 5.0 is the whole number 5
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= LARGEST_COUNT:
            raise InvalidField(name, f"expected a whole number from 0 to {LARGEST_COUNT:,}")
        return value
    if kind is list:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise InvalidField(name, 'expected a list of "METHOD /path" strings')
        return value
    if not isinstance(value, kind):
        raise InvalidField(name, f"expected a {kind.__name__}")
    return value
