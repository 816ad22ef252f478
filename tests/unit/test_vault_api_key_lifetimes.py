"""POST /vault/keys in-process: every key expires, and a lifetime over the maximum is a 422 on expires_in."""

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from keybrake_addon.api.openapi import OPENAPI
from keybrake_addon.api.tokens import AdminTokens
from keybrake_addon.api.vault_api import ApiRequest, VaultApi
from keybrake_addon.installation import Installation
from keybrake_addon.ledger.sqlite import SqliteLedger
from keybrake_addon.vault.crypto import new_master_key
from keybrake_addon.vault.key_lifetimes import MAX_KEY_TTL, set_lifetime
from keybrake_addon.vault.secrets import SecretVault

ISSUE = {"vendor": "stripe", "daily_usd_cap": 5, "allowed_endpoints": ["POST /v1/payment_intents"]}


@pytest.fixture
def api(tmp_path):
    ledger = SqliteLedger(tmp_path / "ledger.db")
    master_key = new_master_key()
    SecretVault(ledger, master_key).put("stripe", "default", "sk_test_" + "a" * 24)
    _, token = AdminTokens(ledger).create("tests")

    async def run_in_db(function, *args):
        return function(*args)

    vault_api = VaultApi(Installation(home=None, ledger=ledger, master_key=master_key, database=None), run_in_db)

    def post(body: dict):
        request = ApiRequest("POST", "/vault/keys", {}, {"authorization": f"Bearer {token}"},
                             json.dumps(body).encode(), "127.0.0.1")
        return asyncio.run(vault_api.handle(request))

    post.ledger = ledger
    yield post
    ledger.close()


def lifetime(document: dict) -> timedelta:
    return datetime.fromisoformat(document["expires_at"].replace("Z", "+00:00")) - datetime.now(UTC)


def test_a_key_requested_without_expires_in_expires_after_the_default(api):
    response = api(ISSUE)
    assert response.status == 201
    assert timedelta(hours=23, minutes=59) < lifetime(response.document) <= timedelta(hours=24)


def test_a_lifetime_over_the_maximum_is_a_422_on_expires_in_until_raised(api):
    refused = api({**ISSUE, "expires_in": "90d"})
    assert refused.status == 422  # a well-formed duration: the installation's setting refuses it
    assert refused.document["error"]["field"] == "expires_in"
    assert "maximum key lifetime (30d)" in refused.document["error"]["message"]
    assert api.ledger.list_keys() == []
    set_lifetime(api.ledger, MAX_KEY_TTL, "90d")
    issued = api({**ISSUE, "expires_in": "90d"})
    assert issued.status == 201 and lifetime(issued.document) > timedelta(days=89)


def test_the_openapi_description_says_keys_expire_by_default():
    description = OPENAPI["components"]["schemas"]["KeyRequest"]["properties"]["expires_in"]["description"]
    assert "Every key expires" in description and "24h" in description and "30d" in description
