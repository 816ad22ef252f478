"""Scoped admin tokens through the vault API, in-process (VaultApi.handle), on both ledger backends.

A scoped token mints only inside its ceilings (403 naming the field), and sees, lists, revokes,
audits and replays only the keys it minted. An unrestricted token sees everything, as before.
"""

import asyncio
import json
from datetime import UTC, datetime

import jsonschema
import pytest

from keybrake_addon.api.key_requests import ConflictingFields, key_request_from_json
from keybrake_addon.api.openapi import OPENAPI
from keybrake_addon.api.tokens import AdminTokens
from keybrake_addon.api.vault_api import ApiRequest, VaultApi
from keybrake_addon.installation import Installation
from keybrake_addon.ledger.base import AdmitRequest, CallFacts
from keybrake_addon.ledger.postgres import PostgresLedger
from keybrake_addon.ledger.sqlite import SqliteLedger
from keybrake_addon.vault.crypto import new_master_key
from keybrake_addon.vault.issuance import KeyRequest, issue_key
from keybrake_addon.vault.scopes import make_scope
from keybrake_addon.vault.secrets import SecretVault
from keybrake_addon.vault.vault_keys import hash_vault_key
from keybrake_addon.vendors.base import CostEstimate

USD = 1_000_000
# Inside every ceiling of TEAM_A: each refusal test changes one field.
ISSUE = {"vendor": "stripe", "daily_usd_cap": 5, "total_usd_cap": 50, "max_calls": 50,
         "allowed_endpoints": ["POST /v1/payment_intents"], "expires_in": "1h", "agent_run_label": "run-1"}
TEAM_A = make_scope(vendors=["stripe"], secret="default", allow=["POST /v1/payment_intents/**", "POST /v1/refunds"],
                    max_daily_cap_micros=10 * USD, max_total_cap_micros=100 * USD, max_calls=50, max_ttl="2h")


class Api:
    def __init__(self, ledger, master_key) -> None:
        self.ledger, self.master_key = ledger, master_key

        async def run_in_db(function, *args):
            return function(*args)

        self._api = VaultApi(Installation(home=None, ledger=ledger, master_key=master_key, database=None), run_in_db)

    def token(self, scope=None) -> str:
        return AdminTokens(self.ledger).create("tests", scope)[1]

    def call(self, token: str, method: str, path: str, body=None, query=None, headers=None):
        request = ApiRequest(method, path, query or {}, {"authorization": f"Bearer {token}", **(headers or {})},
                             b"" if body is None else json.dumps(body).encode(), "127.0.0.1")
        return asyncio.run(self._api.handle(request))

    def issue(self, token: str, body=None, **headers):
        return self.call(token, "POST", "/vault/keys", body or ISSUE, headers=headers)

    def spend_on(self, vault_key: str, usd: float) -> None:
        call = CallFacts("stripe", "POST", "/v1/payment_intents", None, datetime.now(UTC))
        assert self.ledger.admit(AdmitRequest(hash_vault_key(vault_key), call,
                                              CostEstimate(usd_micros=int(usd * USD)))).allowed


@pytest.fixture(params=["sqlite", "postgresql"])
def api(request, tmp_path):
    if request.param == "sqlite":
        ledger = SqliteLedger(tmp_path / "ledger.db")
    else:
        ledger = PostgresLedger(request.getfixturevalue("pg_url"), where="test")
    master_key = new_master_key()
    vault = SecretVault(ledger, master_key)
    vault.put("stripe", "default", "sk_test_" + "a" * 24)
    vault.put("stripe", "team-b", "sk_test_" + "b" * 24)
    yield Api(ledger, master_key)
    ledger.close()


def conforms(response, method: str = "post", path: str = "/vault/keys") -> dict:
    spec = OPENAPI["paths"][path][method]["responses"][str(response.status)]
    schema = {**spec["content"]["application/json"]["schema"], "components": OPENAPI["components"]}
    jsonschema.validate(response.document, schema)
    return response.document


@pytest.mark.parametrize("changes, field", [
    ({"vendor": "resend"}, "vendor"),
    ({"secret": "team-b"}, "secret"),
    ({"secret": "no-such-secret"}, "secret"),  # 403 before the 400 that would name the stored secrets
    ({"daily_usd_cap": "10.01"}, "daily_usd_cap"),
    ({"daily_usd_cap": None, "total_usd_cap": 20}, "daily_usd_cap"),  # $20 could go in one day
    ({"total_usd_cap": 101}, "total_usd_cap"),
    ({"max_calls": 51}, "max_calls"),
    ({"expires_in": "3h"}, "expires_in"),
    ({"expires_in": None}, "expires_in"),  # the installation's default, 24h, is over the token's 2h
    ({"allowed_endpoints": ["POST /v1/charges"]}, "allowed_endpoints"),
    ({"allowed_endpoints": ["* /v1/refunds"]}, "allowed_endpoints"),
    ({"allowed_endpoints": ["POST /v1/**"]}, "allowed_endpoints"),
    ({"allowed_endpoints": ["POST /v1/refunds/**"]}, "allowed_endpoints"),
    ({"allowed_endpoints": ["POST /v1/payment_intents/../charges"]}, "allowed_endpoints"),
    ({"allowed_endpoints": [], "allow_all": True}, "allow_all"),
    ({"daily_usd_cap": None, "total_usd_cap": None, "no_cap": True}, "no_cap"),
    ({"allow_unpriced": True}, "allow_unpriced"),
])
def test_issuance_over_a_ceiling_is_403_naming_the_field(api, changes, field):
    token = api.token(TEAM_A)
    body = {k: v for k, v in {**ISSUE, **changes}.items() if v is not None}
    response = api.issue(token, body)
    assert response.status == 403, response.document
    assert conforms(response)["error"] == {**response.document["error"], "code": "over_ceiling", "field": field}
    assert api.ledger.list_keys() == []


def test_inside_the_ceilings_a_scoped_token_mints_and_the_key_records_it(api):
    token = api.token(TEAM_A)
    body = {**ISSUE, "daily_usd_cap": 10, "total_usd_cap": 100, "max_calls": 50, "expires_in": "2h",
            "allowed_endpoints": ["post /v1/payment_intents/*/capture", "POST /v1/refunds"]}
    issued = api.issue(token, body)
    assert issued.status == 201, issued.document
    (token_id,) = [t.token_id for t in AdminTokens(api.ledger).list() if t.scope is not None]
    assert conforms(issued)["minted_by"] == token_id
    assert api.ledger.get_key(issued.document["key_id"]).spec.minted_by == token_id


def test_a_scoped_token_may_mint_uncapped_or_allow_all_only_when_created_so(api):
    loose = api.token(make_scope(vendors=["stripe"], may_mint_uncapped=True, may_mint_allow_all=True))
    body = {"vendor": "stripe", "no_cap": True, "allow_all": True}
    assert api.issue(loose, body).status == 201
    assert api.issue(api.token(make_scope(vendors=["stripe"])), body).status == 403


def test_a_scoped_token_sees_lists_and_revokes_only_its_own_keys(api):
    admin, team_a, team_b = api.token(), api.token(TEAM_A), api.token(TEAM_A)
    mine = api.issue(team_a).document
    theirs = api.issue(team_b).document
    by_admin = api.issue(admin).document
    by_cli = issue_key(api.ledger, api.master_key, KeyRequest(vendor="stripe", label="run-1", daily_cap_micros=USD,
                                                              allowlist=("POST /v1/payment_intents",)))

    assert api.call(team_a, "GET", f"/vault/keys/{mine['key_id']}").status == 200
    for other in (theirs["key_id"], by_admin["key_id"], by_cli.key_id):
        shown = api.call(team_a, "GET", f"/vault/keys/{other}")
        assert shown.status == 404 and shown.document["error"]["message"] == f"no vault key {other}"
        assert api.call(team_a, "DELETE", f"/vault/keys/{other}").status == 404
        assert api.ledger.get_key(other).revoked_at is None
    listed = api.call(team_a, "GET", "/vault/keys", query={"label": "run-1"})
    assert [k["key_id"] for k in listed.document["data"]] == [mine["key_id"]]

    # Revoking the run's label reaches only this token's keys.
    revoked = api.call(team_a, "DELETE", "/vault/keys", query={"label": "run-1"})
    assert revoked.document == {"revoked": [mine["key_id"]]}
    assert [k.key_id for k in api.ledger.list_keys(active_at=datetime.now(UTC))] == [
        theirs["key_id"], by_admin["key_id"], by_cli.key_id]

    # The unrestricted token sees every key, as every token did before scopes.
    everything = api.call(admin, "GET", "/vault/keys").document["data"]
    assert {k["key_id"] for k in everything} == {mine["key_id"], theirs["key_id"], by_admin["key_id"], by_cli.key_id}
    assert {k["key_id"]: k["minted_by"] for k in everything}[by_cli.key_id] is None
    assert api.call(admin, "DELETE", f"/vault/keys/{theirs['key_id']}").status == 200


def test_audit_and_spend_cover_only_a_scoped_tokens_keys(api):
    admin, team_a = api.token(), api.token(TEAM_A)
    mine = api.issue(team_a).document
    theirs = api.issue(admin).document
    api.spend_on(mine["vault_key"], 1)
    api.spend_on(theirs["vault_key"], 2)
    api.spend_on(theirs["vault_key"], 2)
    refused = CallFacts("stripe", "POST", "/v1/payment_intents", None, datetime.now(UTC))
    assert not api.ledger.admit(AdmitRequest("x" * 64, refused, CostEstimate(usd_micros=USD))).allowed  # no key

    audit = api.call(team_a, "GET", "/vault/audit").document["data"]
    assert [row["key_id"] for row in audit] == [mine["key_id"]]
    # Asking for another token's key by name finds nothing either.
    assert api.call(team_a, "GET", "/vault/audit", query={"key": theirs["key_id"]}).document["data"] == []
    for by in ("label", "key", "vendor", "day"):
        (row,) = api.call(team_a, "GET", "/vault/spend", query={"by": by}).document["data"]
        assert (row["calls"], row["reserved_usd"]) == (1, "1.00"), by
    assert len(api.call(admin, "GET", "/vault/audit").document["data"]) == 4
    (everything,) = api.call(admin, "GET", "/vault/spend", query={"by": "vendor"}).document["data"]
    assert everything["reserved_usd"] == "5.00"


def test_idempotency_keys_are_per_token(api):
    admin, team_a, team_b = api.token(), api.token(TEAM_A), api.token(TEAM_A)
    first = api.issue(team_a, **{"idempotency-key": "run-1"})
    assert first.status == 201
    # Another token, the same Idempotency-Key and body: its own new key, never team A's.
    for other in (team_b, admin):
        elsewhere = api.issue(other, **{"idempotency-key": "run-1"})
        assert elsewhere.status == 201 and elsewhere.document["key_id"] != first.document["key_id"]
        assert elsewhere.document["vault_key"] != first.document["vault_key"]
        again = api.issue(other, **{"idempotency-key": "run-1"})
        assert (again.status, again.document["key_id"]) == (200, elsewhere.document["key_id"])
    # Nor does another body from another token learn that the key was used (no 409).
    assert api.issue(team_b, {**ISSUE, "daily_usd_cap": 3}, **{"idempotency-key": "run-2"}).status == 201
    assert api.issue(team_a, {**ISSUE, "daily_usd_cap": 4}, **{"idempotency-key": "run-2"}).status == 201
    assert api.issue(team_a, {**ISSUE, "daily_usd_cap": 3}, **{"idempotency-key": "run-2"}).status == 409
    # The token's own replay still works.
    replay = api.issue(team_a, **{"idempotency-key": "run-1"})
    assert (replay.status, replay.document["vault_key"]) == (200, first.document["vault_key"])


def test_a_scope_this_release_cannot_read_fails_closed(api):
    token = api.token(TEAM_A)
    with api.ledger.database.transaction() as tx:  # a ceiling from a newer release, say
        tx.run("UPDATE admin_tokens SET scope = ?", ('{"owner_team": "a"}',))
    for method, path, body in (("POST", "/vault/keys", ISSUE), ("GET", "/vault/keys", None),
                               ("GET", "/vault/audit", None)):
        response = api.call(token, method, path, body)
        assert (response.status, response.document["error"]["code"]) == (403, "scope_unreadable")
    assert api.ledger.list_keys() == []
    (listed,) = AdminTokens(api.ledger).list()
    assert listed.scope is not None and "owner_team" in listed.scope_problem


def test_a_token_made_without_ceilings_is_unrestricted(api):
    token = api.token()
    body = {"vendor": "stripe", "secret": "team-b", "no_cap": True, "allow_all": True, "allow_unpriced": True,
            "expires_in": "30d"}
    assert api.issue(token, body).status == 201


# --- a token bound to a budget ----------------------------------------------------------------

def _budgets(api):
    from keybrake_addon.vault.budgets import BudgetRequest, create_budget

    create_budget(api.ledger, BudgetRequest("team-a", total_cap_micros=300 * USD))
    create_budget(api.ledger, BudgetRequest("team-a-nightly", parent="team-a"))
    create_budget(api.ledger, BudgetRequest("team-b", total_cap_micros=300 * USD))


BUDGET_BOUND = make_scope(vendors=["stripe"], budget="team-a")


def test_a_token_bound_to_a_budget_mints_only_into_it_or_a_child(api):
    _budgets(api)
    token = api.token(BUDGET_BOUND)
    uncapped = {k: v for k, v in ISSUE.items() if k not in ("daily_usd_cap", "total_usd_cap")}
    assert api.issue(token, {**uncapped, "budget": "team-a"}).status == 201
    assert api.issue(token, {**uncapped, "budget": "team-a-nightly"}).status == 201  # capped through its parent
    for elsewhere in ({**ISSUE, "budget": "team-b"}, ISSUE):  # another team's budget, or none at all
        refused = api.issue(token, elsewhere)
        assert refused.status == 403
        assert refused.document["error"]["field"] == "budget"


def test_a_token_bound_to_a_budget_reads_its_budgets_and_changes_none(api):
    _budgets(api)
    token = api.token(BUDGET_BOUND)
    listed = api.call(token, "GET", "/vault/budgets")
    assert listed.status == 200
    assert sorted(b["name"] for b in listed.document["data"]) == ["team-a", "team-a-nightly"]
    assert api.call(token, "GET", "/vault/budgets/team-b").status == 404
    assert api.call(token, "GET", "/vault/budgets/team-a").status == 200
    for path in ("/vault/budgets/team-a/freeze", "/vault/budgets/team-b/freeze"):
        assert api.call(token, "POST", path).status == 403
    assert api.call(token, "POST", "/vault/budgets", {"name": "mine", "parent": "team-a"}).status == 403
    assert api.ledger.get_budget("team-a").frozen_at is None
    other = api.token(make_scope(vendors=["stripe"]))  # scoped, bound to no budget: sees none
    assert api.call(other, "GET", "/vault/budgets").document["data"] == []


def test_label_is_the_input_name_and_agent_run_label_still_works():
    base = {"vendor": "stripe", "no_cap": True, "allow_all": True}
    assert key_request_from_json({**base, "label": "run-1"}).label == "run-1"
    assert key_request_from_json({**base, "agent_run_label": "run-1"}).label == "run-1"
    assert key_request_from_json({**base, "label": "run-1", "agent_run_label": "run-1"}).label == "run-1"
    with pytest.raises(ConflictingFields) as both:  # a rule the description cannot state: a 422
        key_request_from_json({**base, "label": "run-1", "agent_run_label": "run-2"})
    assert both.value.field == "label"
