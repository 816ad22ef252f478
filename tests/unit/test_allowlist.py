"""Endpoint allowlist patterns: `METHOD /path`, `*` one segment, `**` the rest."""

import pytest

from keybrake_addon.vault.allowlist import InvalidPattern, is_allowed, parse_pattern, validate_patterns


@pytest.mark.parametrize(
    "pattern, method, path, allowed",
    [
        # exact
        ("GET /v1/customers", "GET", "/v1/customers", True),
        ("GET /v1/customers", "GET", "/v1/customers/cus_1", False),
        ("GET /v1/customers", "GET", "/v1/customer", False),
        ("GET /v1/customers", "POST", "/v1/customers", False),
        # paths are case-sensitive
        ("GET /v1/customers", "GET", "/V1/Customers", False),
        ("GET /v1/Customers", "GET", "/v1/customers", False),
        # methods are not
        ("GET /v1/customers", "get", "/v1/customers", True),
        ("get /v1/customers", "GET", "/v1/customers", True),
        ("* /v1/customers", "DELETE", "/v1/customers", True),
        # `*` is exactly one non-empty segment
        ("GET /v1/customers/*", "GET", "/v1/customers/cus_1", True),
        ("GET /v1/customers/*", "GET", "/v1/customers/cus_1/sources", False),
        ("GET /v1/customers/*", "GET", "/v1/customers", False),
        ("GET /v1/customers/*", "GET", "/v1/customers/", False),
        ("POST /v1/payment_intents/*/confirm", "POST", "/v1/payment_intents/pi_1/confirm", True),
        ("POST /v1/payment_intents/*/confirm", "POST", "/v1/payment_intents/pi_1/capture", False),
        ("POST /v1/payment_intents/*/confirm", "POST", "/v1/payment_intents/a/b/confirm", False),
        # `**` is the rest, including nothing
        ("GET /v1/**", "GET", "/v1", True),
        ("GET /v1/**", "GET", "/v1/", True),
        ("GET /v1/**", "GET", "/v1/customers", True),
        ("GET /v1/**", "GET", "/v1/customers/cus_1/sources", True),
        ("GET /v1/**", "GET", "/v10", False),
        ("GET /v1/**", "GET", "/v2/customers", False),
        ("GET /**", "GET", "/anything/at/all", True),
        # a path is matched whole, and `**` is the rest whatever it holds
        ("GET /v1/customers", "GET", "/v1/customers\n", False),
        ("GET /v1/**", "GET", "/v1/a\nb", True),
        # literal segments are literal, not regex
        ("GET /v1.0/x", "GET", "/v1a0/x", False),
        ("GET /v1.0/x", "GET", "/v1.0/x", True),
    ],
)
def test_matches(pattern, method, path, allowed):
    assert parse_pattern(pattern).matches(method, path) is allowed


@pytest.mark.parametrize(
    "pattern",
    [
        "/v1/customers",  # no method
        "",
        "FETCH /v1/customers",  # not an HTTP method
        "GET v1/customers",  # path without '/'
        "GET *",
        "GET /v1/**/customers",  # `**` not last
        "GET /v1/cus*",  # partial-segment `*`
        "GET /v1/*x/y",
        "GET /v1/***",
        "GET /v1 /customers",  # three parts
    ],
)
def test_invalid_patterns(pattern):
    with pytest.raises(InvalidPattern):
        parse_pattern(pattern)


def test_invalid_pattern_is_a_value_error():
    assert issubclass(InvalidPattern, ValueError)


def test_parse_pattern_fields():
    parsed = parse_pattern("  post   /v1/refunds  ")
    assert (parsed.method, parsed.path) == ("POST", "/v1/refunds")


def test_validate_patterns_normalises():
    assert validate_patterns([" get   /v1/customers ", "post /v1/payment_intents/*", "* /v1/**"]) == [
        "GET /v1/customers", "POST /v1/payment_intents/*", "* /v1/**",
    ]


def test_validate_patterns_raises_on_the_bad_entry():
    with pytest.raises(InvalidPattern) as info:
        validate_patterns(["GET /v1/customers", "GET /v1/**/x"])
    assert "'GET /v1/**/x'" in str(info.value)


def test_validate_patterns_empty():
    assert validate_patterns([]) == []


@pytest.mark.parametrize(
    "entries, method, path, allowed",
    [
        (["GET /v1/customers", "POST /v1/payment_intents"], "POST", "/v1/payment_intents", True),
        (["GET /v1/customers", "POST /v1/payment_intents"], "POST", "/v1/refunds", False),
        (("GET /v1/**",), "GET", "/v1/charges", True),
        ([], "GET", "/v1/customers", False),
    ],
)
def test_is_allowed(entries, method, path, allowed):
    assert is_allowed(entries, method, path) is allowed
