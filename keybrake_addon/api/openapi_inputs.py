"""What the vault API accepts, as JSON Schema: its parameters and request bodies.

The API checks every request against these before a handler reads it (validation.py), so
what they allow is what it accepts, and anything else is a 400 naming the field. Patterns are
JSON Schema's (ECMA 262): ASCII only, `$` the end of the text.

Text the API stores or shows back (labels, secret names, URLs) has no control characters: an
operator's terminal would act on them, and PostgreSQL refuses NUL.
"""

from ..ledger.alert_events import KINDS
from ..money import LARGEST_USD
from ..vendors import VENDORS
from .key_requests import LARGEST_COUNT

CONTROL = r"\x00-\x1f\x7f-\x9f"
PRINTABLE = {"type": "string", "pattern": f"^[^{CONTROL}]*$"}
# Python's str.split() splits on these too: an allowlist entry is two words, so none inside one.
_SPACE = r" \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
_ANY_CASE_METHOD = "|".join("".join(f"[{c}{c.lower()}]" for c in method) for method in _METHODS)
_SEGMENT = f"(?:\\*|[^/*{_SPACE}{CONTROL}]*)"
ALLOWLIST_ENTRY = {
    "type": "string", "examples": ["POST /v1/payment_intents", "GET /v1/customers/*", "* /v1/**"],
    "pattern": f"^ *(?:{_ANY_CASE_METHOD}|\\*) +(?=/)(?:/{_SEGMENT})*(?:/\\*\\*)? *$",
    "description": "`METHOD /path`: `*` as a method is any method; in the path, `*` is one whole segment and a "
                   "final `**` the rest",
}

VENDOR = {"enum": sorted(VENDORS)}
_UP_TO_LARGEST_USD = f"0*(?:[0-9]{{1,{len(str(LARGEST_USD)) - 1}}}(?:\\.[0-9]+)?|{LARGEST_USD}(?:\\.0+)?)"
USD_INPUT = {
    "type": ["number", "string", "null"], "minimum": 0, "maximum": LARGEST_USD, "pattern": f"^{_UP_TO_LARGEST_USD}$",
    "examples": [500, "12.50"],
    "description": f"US dollars from 0 to {LARGEST_USD:,}: a JSON number, or a decimal string such as \"12.50\"; "
                   "a fraction of a cent rounds up to the next micro-dollar",
}
COUNT = {"type": ["integer", "null"], "minimum": 0, "maximum": LARGEST_COUNT}
DURATION_PATTERN = "^0*[1-9][0-9]*[smhd]$"
BUDGET_NAME = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
               "description": "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"}
STRIPE_ACCOUNT = {"type": "string", "pattern": "^acct_[A-Za-z0-9]{1,64}$"}


def nullable(schema: dict) -> dict:
    """The schema, or null (an optional field sent as null is a field not sent)."""
    if "enum" in schema:
        return {**schema, "enum": [*schema["enum"], None]}
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    return {**schema, "type": [*kinds, "null"]}


def _id(prefix: str, what: str) -> dict:
    # No "/": a decoded %2F would make the path another route's.
    return {"type": "string", "pattern": f"^{prefix}[^/{CONTROL}]*$", "description": f"{what}, {prefix}..."}


KEY_ID = _id("kbk_", "a vault key's id")
SUBSCRIPTION_ID = _id("sub_", "an alert subscription's id")
DELIVERY_ID = _id("dlv_", "an alert delivery's id")

_SINCE = {
    "anyOf": [{"type": "string", "format": "date-time"}, {"type": "string", "format": "date"},
              {"type": "string", "pattern": DURATION_PATTERN}],
    "examples": ["2h", "2025-01-31T09:00:00Z", "2025-01-31"],
}
_SINCE_DESCRIPTION = ("rows from this time on: an RFC 3339 date-time (`2025-01-31T09:00:00Z`), a date (its "
                      "midnight UTC), or a duration back from now (`90s`, `90m`, `2h`, `7d`)")


def query(name: str, schema: dict, description: str, *, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


def path(name: str, schema: dict) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": schema}


LABEL_FILTER = query("label", PRINTABLE, "only keys of this run label")
AUDIT_FILTERS = [
    LABEL_FILTER,
    query("key", PRINTABLE, "only this key's rows (its key_id)"),
    query("since", _SINCE, _SINCE_DESCRIPTION),
    query("limit", {"type": "integer", "minimum": 1, "maximum": LARGEST_COUNT}, "at most this many rows"),
]
BOOLEAN = {"type": "boolean"}  # as a query parameter: `true` or `false`

KEY_REQUEST = {
    "type": "object", "additionalProperties": False, "required": ["vendor"],
    "description": "Every field but vendor is optional; null is the same as leaving it out. The schema does "
                   "not state every rule: a request that fits it and breaks one of these is a 422 naming "
                   "the field: a key needs a cap (daily_usd_cap, total_usd_cap, a capped budget, or "
                   "no_cap: true, which contradicts a cap); it needs allowed_endpoints unless allow_all; "
                   "secret and budget name ones that exist; stripe_account is for Stripe keys; expires_in is "
                   "at most the installation's maximum key lifetime.",
    "properties": {
        "vendor": VENDOR,
        "secret": {**nullable(PRINTABLE), "default": "default",
                   "description": "the name of the stored vendor secret (`keybrake secret set`) the key spends"},
        "daily_usd_cap": USD_INPUT,
        "total_usd_cap": USD_INPUT,
        "max_calls": COUNT,
        "allowed_endpoints": {"type": ["array", "null"], "items": ALLOWLIST_ENTRY,
                              "examples": [["POST /v1/payment_intents"]]},
        "allow_all": nullable(BOOLEAN), "no_cap": nullable(BOOLEAN), "allow_unpriced": nullable(BOOLEAN),
        "expires_in": {"type": ["string", "null"], "pattern": DURATION_PATTERN, "examples": ["2h"],
                       "description": "the key's lifetime. Every key expires: without this, after the "
                                      "installation's default TTL (24h unless changed with `keybrake "
                                      "settings set default-key-ttl`). Longer than the installation's "
                                      "maximum (30d unless raised with `keybrake settings set "
                                      "max-key-ttl`) is refused: 422 with error.field = expires_in"},
        "label": {**nullable(PRINTABLE), "description": "the run this key belongs to, for lists, spend and "
                                                        "revoking a whole run (answers and filters call it label)"},
        "agent_run_label": {**nullable(PRINTABLE), "deprecated": True,
                            "description": "the older name of label, still accepted; both with different values "
                                           "is a 422 on label"},
        "budget": {**nullable(BUDGET_NAME),
                   "description": "the budget the key spends from: every call is checked against its caps and "
                                  "its ancestors' too. A capped budget stands in for the key's own cap. An "
                                  "unknown budget is 422 with error.field = budget"},
        "stripe_account": {
            **nullable(STRIPE_ACCOUNT),
            "description": "Stripe keys only: the Connect connected account every call acts for. A call must "
                           "then send `Stripe-Account` with this value; a call without it (the platform "
                           "account) or with another is refused, 403 keybrake_account_mismatch. Without this "
                           "field, any Stripe-Account header is refused"},
    },
}

BUDGET_REQUEST = {
    "type": "object", "additionalProperties": False, "required": ["name"],
    "description": "null is the same as leaving a field out. An unknown parent is a 422 naming it.",
    "properties": {
        "name": BUDGET_NAME,
        "parent": {**nullable(BUDGET_NAME), "description": "the budget this one spends from; fixed once created"},
        "daily_usd_cap": USD_INPUT,
        "total_usd_cap": USD_INPUT,
    },
}

_URL_PATTERN = f"^[Hh][Tt][Tt][Pp][Ss]?://[^/?#@{_SPACE}{CONTROL}]+(?:[/?#][^{CONTROL}]*)?$"
ALERT_SUBSCRIPTION_REQUEST = {
    "type": "object", "additionalProperties": False, "required": ["url"],
    "description": "null is the same as leaving a field out. A URL that fits the pattern and still cannot be "
                   "used (no host, a bad port, a private address without allow_private) is a 422 on url.",
    "properties": {
        "url": {"type": "string", "minLength": 1, "maxLength": 2048, "pattern": _URL_PATTERN,
                "examples": ["https://hooks.example.com/keybrake"],
                "description": "http(s), without a user or password; a private address needs allow_private"},
        "events": {"type": ["array", "null"], "minItems": 1, "items": {"enum": list(KINDS)},
                   "description": "default: every event"},
        "thresholds": {"type": ["array", "null"], "minItems": 1,
                       "items": {"type": "integer", "minimum": 1, "maximum": 100},
                       "default": [50, 80, 100], "description": "percents of a cap"},
        "label_prefix": {**nullable(PRINTABLE), "minLength": 1, "maxLength": 200,
                         "description": "only keys whose label starts with it; budget and ledger events are about "
                                        "no one key and still come"},
        "vendor": {**nullable(VENDOR), "description": "only keys of this vendor; budget and ledger events still come"},
        "format": {"enum": ["standard", "slack", None], "default": "standard"},
        "allow_private": {**nullable(BOOLEAN), "default": False},
    },
}


# What a value that misses a pattern is told (else the pattern itself).
PATTERN_RULES = {
    PRINTABLE["pattern"]: "must not contain control characters (newlines, tabs, escapes)",
    ALLOWLIST_ENTRY["pattern"]: "an allowlist entry is 'METHOD /path', where * is one whole path segment and a "
                                "final ** the rest",
    USD_INPUT["pattern"]: f"expected a dollar amount from 0 to {LARGEST_USD:,}, such as 500 or \"12.50\"",
    DURATION_PATTERN: "expected a positive duration like 90s, 90m, 2h or 1d",
    BUDGET_NAME["pattern"]: f"a budget name is {BUDGET_NAME['description']}",
    STRIPE_ACCOUNT["pattern"]: "expected a Stripe account id: acct_ and up to 64 letters and digits",
    _URL_PATTERN: "expected an http:// or https:// URL with a host, and no user or password in it",
    **{schema["pattern"]: f"expected {schema['description']} (and no '/' or control characters)"
       for schema in (KEY_ID, SUBSCRIPTION_ID, DELIVERY_ID)},
}
