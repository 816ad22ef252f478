"""Decoding of the request bodies vendors take, shared by the vendor modules."""

import json
from urllib.parse import parse_qsl

from .base import MalformedRequest


def parse_form_pairs(body: bytes) -> list[tuple[str, str]]:
    """Every `(key, value)` of a form body (or a query string) in order, repeats included; bracketed
    keys stay as written (`a[b]`). `dict()` of it keeps a repeated key's last value, as Stripe does.

    parse_qsl unescapes `%5B`/`%5D`, so stripe-python's raw brackets and other clients' escaped
    ones come out the same."""
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


class _RepeatedKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    found: dict = {}
    for key, value in pairs:
        if key in found:
            raise _RepeatedKey(key)
        found[key] = value
    return found


def parse_json_request(body: bytes) -> dict | list | None:
    """A request body's JSON (None if it is not JSON), refused where two readers could disagree on
    what it says: an object naming a key twice (Python keeps the last value, another reader the
    first, or both), or nesting deep enough to exhaust the parser. Responses are read with
    parse_json_object: an odd answer is still an answer."""
    if not body:
        return None
    try:
        return json.loads(body, object_pairs_hook=_unique_keys)
    except _RepeatedKey as repeated:
        raise MalformedRequest(f"the JSON body names {str(repeated)[:40]!r} more than once in one object") from None
    except RecursionError:
        raise MalformedRequest("the JSON body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        return None
