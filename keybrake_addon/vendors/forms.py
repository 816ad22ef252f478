"""Decoding of the request bodies vendors take, shared by the vendor modules."""

import json
from urllib.parse import parse_qsl


def parse_form(body: bytes) -> dict[str, str]:
    """Flat `key -> value` view of a form body; bracketed keys stay as written (`a[b]`).

    parse_qsl unescapes `%5B`/`%5D`, so stripe-python's raw brackets and other clients'
    escaped ones come out the same. A repeated key keeps its last value, as Stripe does.
    """
    return dict(parse_form_pairs(body))


def parse_form_pairs(body: bytes) -> list[tuple[str, str]]:
    """Every `(key, value)` of a form body (or a query string) in order, repeats included, for
    vendors that do not document which of a repeated key's values they use."""
    if not body:
        return []
    return parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)


def parse_json_object(body: bytes) -> dict | list | None:
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
