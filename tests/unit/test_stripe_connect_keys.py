"""Issuing a Stripe key for one Connect account: POST /vault/keys' stripe_account, in-process, and its checks."""

import asyncio
import json

import pytest

from keybrake_addon.api.tokens import AdminTokens
from keybrake_addon.api.vault_api import ApiRequest, VaultApi
from keybrake_addon.installation import Installation
from keybrake_addon.ledger.sqlite import SqliteLedger
from keybrake_addon.vault.crypto import new_master_key
from keybrake_addon.vault.secrets import SecretVault

STRIPE = {"vendor": "stripe", "daily_usd_cap": 5, "allowed_endpoints": ["POST /v1/payment_intents"]}


@pytest.fixture
def api(tmp_path):
    ledger = SqliteLedger(tmp_path / "ledger.db")
    master_key = new_master_key()
    vault = SecretVault(ledger, master_key)
    vault.put("stripe", "default", "sk_test_" + "a" * 24)
    vault.put("twilio", "default", "t" * 32, "AC" + "0" * 32)
    _, token = AdminTokens(ledger).create("tests")

    async def run_in_db(function, *args):
        return function(*args)

    vault_api = VaultApi(Installation(home=None, ledger=ledger, master_key=master_key, database=None), run_in_db)

    def call(method: str, path: str, body: dict | None = None):
        request = ApiRequest(method, path, {}, {"authorization": f"Bearer {token}"},
                             json.dumps(body).encode() if body is not None else b"", "127.0.0.1")
        return asyncio.run(vault_api.handle(request))

    call.ledger = ledger
    yield call
    ledger.close()


def test_a_stripe_key_names_its_connected_account_in_every_document(api):
    issued = api("POST", "/vault/keys", {**STRIPE, "stripe_account": "acct_1Nv0FGQ9RKHgCVdK"})
    assert issued.status == 201 and issued.document["stripe_account"] == "acct_1Nv0FGQ9RKHgCVdK"
    key_id = issued.document["key_id"]
    assert api("GET", f"/vault/keys/{key_id}").document["stripe_account"] == "acct_1Nv0FGQ9RKHgCVdK"
    assert api.ledger.get_key(key_id).spec.stripe_account == "acct_1Nv0FGQ9RKHgCVdK"
    plain = api("POST", "/vault/keys", STRIPE)
    assert plain.document["stripe_account"] is None


@pytest.mark.parametrize("body, reason", [
    ({**STRIPE, "stripe_account": "acct_"}, "acct_ and up to 64 letters and digits"),
    ({**STRIPE, "stripe_account": "cus_1Nv0FGQ9RKHgCVdK"}, "acct_ and up to 64"),
    ({**STRIPE, "stripe_account": "acct_1 OR 1=1"}, "acct_ and up to 64"),
    ({**STRIPE, "stripe_account": "acct_1\n"}, "acct_ and up to 64"),
    ({**STRIPE, "stripe_account": "acct_" + "a" * 65}, "acct_ and up to 64"),
    ({**STRIPE, "stripe_account": 7}, "expected a str"),
])
def test_a_bad_stripe_account_is_a_400_naming_the_field(api, body, reason):
    refused = api("POST", "/vault/keys", body)
    assert refused.status == 400, refused.document
    assert refused.document["error"]["field"] == "stripe_account"
    assert reason in refused.document["error"]["message"]
    assert api.ledger.list_keys() == []


def test_a_connected_account_on_a_key_of_another_vendor_is_a_422_naming_the_field(api):
    # Each field fits the description; together they break a rule it does not state.
    refused = api("POST", "/vault/keys", {"vendor": "twilio", "daily_usd_cap": 5,
                                          "allowed_endpoints": ["POST /2010-04-01/Accounts/*/Messages.json"],
                                          "stripe_account": "acct_1Nv0FGQ9RKHgCVdK"})
    assert (refused.status, refused.document["error"]["field"]) == (422, "stripe_account")
    assert "only Stripe keys" in refused.document["error"]["message"]
    assert api.ledger.list_keys() == []
