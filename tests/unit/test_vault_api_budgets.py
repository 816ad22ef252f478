"""/vault/budgets in-process, each answer checked against the OpenAPI description; and the
`budget` field of POST /vault/keys."""

import asyncio
import json

import jsonschema
import pytest

from keybrake_addon.api.openapi import OPENAPI
from keybrake_addon.api.tokens import AdminTokens
from keybrake_addon.api.vault_api import ApiRequest, VaultApi
from keybrake_addon.installation import Installation
from keybrake_addon.ledger.sqlite import SqliteLedger
from keybrake_addon.vault.crypto import new_master_key
from keybrake_addon.vault.secrets import SecretVault

ISSUE = {"vendor": "stripe", "allowed_endpoints": ["POST /v1/payment_intents"]}


@pytest.fixture
def api(tmp_path):
    ledger = SqliteLedger(tmp_path / "ledger.db")
    master_key = new_master_key()
    SecretVault(ledger, master_key).put("stripe", "default", "sk_test_" + "a" * 24)
    _, token = AdminTokens(ledger).create("tests")

    async def run_in_db(function, *args):
        return function(*args)

    vault_api = VaultApi(Installation(home=None, ledger=ledger, master_key=master_key, database=None), run_in_db)

    def call(method: str, path: str, body: dict | None = None, *, template: str | None = None,
             authorised: bool = True, query: dict | None = None):
        headers = {"authorization": f"Bearer {token}"} if authorised else {}
        request = ApiRequest(method, path, query or {}, headers, json.dumps(body).encode() if body is not None else b"",
                             "127.0.0.1")
        response = asyncio.run(vault_api.handle(request))
        described = OPENAPI["paths"][template or path][method.lower()]["responses"][str(response.status)]
        schema = {**described["content"]["application/json"]["schema"], "components": OPENAPI["components"]}
        jsonschema.validate(response.document, schema)
        return response

    yield call
    ledger.close()


def test_create_list_show_freeze_and_unfreeze(api):
    created = api("POST", "/vault/budgets", {"name": "org", "total_usd_cap": "1000"})
    assert created.status == 201
    assert (created.document["name"], created.document["total_usd_cap"]) == ("org", "1000.00")
    child = api("POST", "/vault/budgets", {"name": "team", "parent": "org", "daily_usd_cap": 50})
    assert (child.status, child.document["parent"], child.document["remaining_usd"]) == (201, "org", "50.00")
    listed = api("GET", "/vault/budgets")
    assert [b["name"] for b in listed.document["data"]] == ["org", "team"]
    shown = api("GET", "/vault/budgets/org", template="/vault/budgets/{name}")
    assert shown.document["children"] == ["team"]

    frozen = api("POST", "/vault/budgets/org/freeze", template="/vault/budgets/{name}/freeze")
    assert (frozen.status, frozen.document["status"], frozen.document["frozen_by"]) == (200, "frozen", "org")
    team = api("GET", "/vault/budgets/team", template="/vault/budgets/{name}").document
    assert (team["status"], team["frozen_by"]) == ("frozen", "org")
    thawed = api("POST", "/vault/budgets/org/unfreeze", template="/vault/budgets/{name}/unfreeze")
    assert thawed.document["status"] == "active" and thawed.document["frozen_at"] is None


@pytest.mark.parametrize("body, status, field", [
    ({"name": "org"}, 409, "name"),
    ({"name": "team", "parent": "nobody"}, 422, "parent"),  # fits the description; no such budget
    ({"name": "a b"}, 400, "name"),
    ({"name": "x", "total_usd_cap": -5}, 400, "total_usd_cap"),
    ({"name": "x", "total_usd_cap": True}, 400, "total_usd_cap"),
    ({"name": "x", "owner": "me"}, 400, "owner"),
    ({"parent": "org"}, 400, "name"),
    ([], 400, "body"),
])
def test_create_refusals_name_the_field(api, body, status, field):
    api("POST", "/vault/budgets", {"name": "org"})
    refused = api("POST", "/vault/budgets", body)
    assert (refused.status, refused.document["error"]["field"]) == (status, field)


def test_unknown_budgets_routes_and_methods(api):
    assert api("GET", "/vault/budgets/nobody", template="/vault/budgets/{name}").status == 404
    assert api("POST", "/vault/budgets/nobody/freeze", template="/vault/budgets/{name}/freeze").status == 404
    assert api("DELETE", "/vault/budgets", template="/vault/keys").status == 405
    assert api("GET", "/vault/budgets/org/freeze", template="/vault/keys").status == 405
    assert api("GET", "/vault/budgets", authorised=False).status == 401


def test_issuing_into_a_budget(api):
    api("POST", "/vault/budgets", {"name": "org", "total_usd_cap": 300})
    issued = api("POST", "/vault/keys", {**ISSUE, "budget": "org"})
    assert (issued.status, issued.document["budget"], issued.document["total_usd_cap"]) == (201, "org", None)
    unknown = api("POST", "/vault/keys", {**ISSUE, "budget": "nobody", "total_usd_cap": 5})
    assert (unknown.status, unknown.document["error"]["field"]) == (422, "budget")
    assert "no budget named 'nobody'" in unknown.document["error"]["message"]
    api("POST", "/vault/budgets", {"name": "open"})
    uncapped = api("POST", "/vault/keys", {**ISSUE, "budget": "open"})
    assert (uncapped.status, uncapped.document["error"]["field"]) == (422, "daily_usd_cap")
    spend = api("GET", "/vault/spend", query={"by": "budget"})
    assert spend.status == 200 and spend.document["data"] == []


def test_an_error_quotes_a_strangers_text_bounded(api):
    """What a request sent comes back in an error's message only bounded: a 60 KiB name in the
    path is not sent back whole."""
    missing = api("GET", "/vault/budgets/org/" + "n" * 60_000, template="/vault/budgets/{name}")
    assert missing.status == 404
    assert missing.document["error"]["message"].startswith("no such endpoint: /vault/budgets/org/nnn")
    assert len(missing.document["error"]["message"]) <= 300
