"""The vault API takes what its description allows and refuses the rest, through the listener's app:
what schemathesis found, each pinned down (test_openapi_conformance.py runs schemathesis itself)."""

import asyncio
import json

import httpx
import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keybrake_addon.api.openapi import OPENAPI
from keybrake_addon.api.openapi_inputs import (ALLOWLIST_ENTRY, BUDGET_NAME, DURATION_PATTERN, STRIPE_ACCOUNT,
                                               USD_INPUT)
from keybrake_addon.api.validation import ecma_pattern
from keybrake_addon.durations import InvalidDuration, parse_duration
from keybrake_addon.money import LARGEST_USD, usd_to_micros
from keybrake_addon.vault.allowlist import validate_patterns
from keybrake_addon.vault.budgets import check_name
from keybrake_addon.vendors.stripe import CONNECTED_ACCOUNT_ID
from support.listener_app import listener_on_sqlite

ISSUE = {"vendor": "stripe", "daily_usd_cap": 5, "allowed_endpoints": ["POST /v1/payment_intents"]}


@pytest.fixture
def call(tmp_path):
    listener = listener_on_sqlite(tmp_path / "ledger.db")

    def send(method: str, path: str, body=None, template: str | None = None) -> httpx.Response:
        content = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()

        async def go():
            transport = httpx.ASGITransport(app=listener.app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://keybrake") as client:
                return await client.request(method, path, content=content,
                                            headers={"authorization": f"Bearer {listener.token}"})

        answer = asyncio.run(go())
        if template is not None:  # the answer as the description says it looks
            described = OPENAPI["paths"][template][method.lower()]["responses"][str(answer.status_code)]
            schema = {**described["content"]["application/json"]["schema"], "components": OPENAPI["components"]}
            jsonschema.validate(answer.json(), schema)
        return answer

    yield send
    listener.ledger.close()


def test_a_decoded_tab_in_the_path_is_kept(call):
    # Starlette's request.url drops a tab or newline (urlsplit's clean-up): /vault/alerts/%09 was
    # served as /vault/alerts, the list, and a DELETE of it as "DELETE is not allowed".
    for method in ("GET", "DELETE"):
        answer = call(method, "/vault/alerts/%09", template="/vault/alerts/{subscription_id}")
        assert (answer.status_code, answer.json()["error"]["field"]) == (400, "subscription_id")


def test_allow_lists_the_methods_of_the_literal_path_before_a_templated_one(call):
    # /vault/alerts/deliveries is not the subscription "deliveries" (GET, DELETE).
    answer = call("OPTIONS", "/vault/alerts/deliveries")
    assert (answer.status_code, answer.headers["allow"]) == (405, "GET")
    assert call("DELETE", "/vault/alerts/deliveries").headers["allow"] == "GET"
    assert call("PUT", "/vault/alerts/sub_1").headers["allow"] == "DELETE, GET"


@pytest.mark.parametrize("method, path, body", [
    ("GET", "/vault/audit?since=0001-01-01T00:00:00%2B14:00", None),  # before year 1 once in UTC
    ("GET", "/vault/spend?since=9999-12-31T23:59:59-23:59", None),  # after 9999 once in UTC
    ("GET", "/vault/audit?since=99999999999999d", None),  # a look-back past Python's dates
    ("GET", "/vault/audit?limit=99999999999999999999", None),  # past SQL's integers
    ("GET", "/vault/audit?limit=%C2%B2", None),  # "²" is a digit to str.isdigit, not to int()
    ("POST", "/vault/keys", {**ISSUE, "expires_in": "1" * 5000 + "s"}),  # past int()'s 4300 digits
    ("POST", "/vault/keys", {**ISSUE, "agent_run_label": "\ud800"}),  # a lone surrogate: no UTF-8 for SQLite
    ("POST", "/vault/keys", b"[" * 60_000),  # deeper than the JSON parser recurses
    ("POST", "/vault/alerts", b'{"url": "https://hooks.example.com/", "events": ' + b"[" * 60_000 + b"]}"),
])
def test_no_input_is_a_server_error(call, method, path, body):
    answer = call(method, path, body)
    assert answer.status_code < 500, answer.text
    assert answer.status_code in (200, 400, 422)


@pytest.mark.parametrize("body", [
    {**ISSUE, "max_calls": 5.0},  # JSON has one number type: 5.0 is the integer 5
    {**ISSUE, "daily_usd_cap": "12.50", "total_usd_cap": None, "budget": None, "allow_all": None},
    {**ISSUE, "allowed_endpoints": ["post  /v1/payment_intents ", "* /v1/customers/*", "GET /v1/**"]},
])
def test_what_the_description_allows_a_key_request_is_issued(call, body):
    assert call("POST", "/vault/keys", body, template="/vault/keys").status_code == 201


def test_what_the_description_allows_an_alert_subscription_is_made(call):
    body = {"url": "https://hooks.example.com/keybrake", "thresholds": [80.0, 100], "events": None,
            "label_prefix": None, "vendor": None, "format": None, "allow_private": None}
    made = call("POST", "/vault/alerts", body, template="/vault/alerts")
    assert made.status_code == 201 and made.json()["thresholds"] == [80, 100]


@pytest.mark.parametrize("body, field", [
    ({**ISSUE, "daily_usd_cap": ""}, "daily_usd_cap"),
    ({**ISSUE, "daily_usd_cap": "$5"}, "daily_usd_cap"),
    ({**ISSUE, "daily_usd_cap": "1000000000.01"}, "daily_usd_cap"),
    ({**ISSUE, "max_calls": 5.5}, "max_calls"),
    ({**ISSUE, "stripe_account": "acct_1\n"}, "stripe_account"),  # JSON Schema's `$` is the end of the text
    ({**ISSUE, "allowed_endpoints": ["GET /v1/a*"]}, "allowed_endpoints"),
    ({**ISSUE, "allowed_endpoints": ["GET /v1/\u00a0x"]}, "allowed_endpoints"),  # a third word to str.split()
    ({**ISSUE, "secret": "a\x1bb"}, "secret"),
])
def test_a_key_request_the_description_refuses_is_a_400_naming_the_field(call, body, field):
    answer = call("POST", "/vault/keys", body, template="/vault/keys")
    assert (answer.status_code, answer.json()["error"]["field"]) == (400, field)


@pytest.mark.parametrize("path, field", [
    ("/vault/keys?active=1", "active"),  # OpenAPI writes a boolean true or false
    ("/vault/audit?since=", "since"),
    ("/vault/audit?since=2024-02-30", "since"),
    ("/vault/spend?limit=0", "limit"),
    ("/vault/audit?key=kbk_%00", "key"),  # PostgreSQL refuses NUL in text
])
def test_a_query_the_description_refuses_is_a_400_naming_the_parameter(call, path, field):
    answer = call("GET", path)
    assert (answer.status_code, answer.json()["error"]["field"]) == (400, field)


@pytest.mark.parametrize("since", ["2h", "2025-01-31", "2025-01-31T09:00:00Z", "2016-12-31t23:59:60.5z"])
def test_every_since_the_description_allows_is_taken(call, since):
    assert call("GET", f"/vault/audit?since={since}", template="/vault/audit").status_code == 200


def test_a_revocation_by_label_needs_a_label(call):
    refused = call("DELETE", "/vault/keys?label=", template="/vault/keys")
    assert (refused.status_code, refused.json()["error"]["field"]) == (400, "label")
    assert OPENAPI["paths"]["/vault/keys"]["delete"]["parameters"][0]["schema"]["minLength"] == 1


# Whatever a field's pattern admits, the code behind it takes: a 422 is only ever a rule the
# description states in prose (the conformance run allows 422 on these operations, so it could
# not see a pattern wider than the code).
@settings(max_examples=300, deadline=None, derandomize=True)
@given(entry=st.from_regex(ecma_pattern(ALLOWLIST_ENTRY["pattern"])))
def test_every_allowlist_entry_the_description_admits_is_a_valid_pattern(entry):
    assert validate_patterns([entry])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(amount=st.from_regex(ecma_pattern(USD_INPUT["pattern"])))
def test_every_dollar_string_the_description_admits_is_an_amount(amount):
    assert 0 <= usd_to_micros(amount) <= LARGEST_USD * 1_000_000


@settings(max_examples=300, deadline=None, derandomize=True)
@given(lifetime=st.from_regex(ecma_pattern(DURATION_PATTERN)))
def test_every_duration_the_description_admits_is_one_or_too_long(lifetime):
    try:
        assert parse_duration(lifetime).total_seconds() > 0
    except InvalidDuration as too_long:
        assert "at most" in str(too_long)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(name=st.from_regex(ecma_pattern(BUDGET_NAME["pattern"])),
       account=st.from_regex(ecma_pattern(STRIPE_ACCOUNT["pattern"])))
def test_budget_names_and_accounts_the_description_admits_are_taken(name, account):
    assert check_name(name) == name and CONNECTED_ACCOUNT_ID.fullmatch(account)
