"""Scoped admin tokens on a running proxy: one team's token cannot see, revoke or replay another's key."""

import json

import httpx

from .helpers import keybrake

PI = {"amount": 5000, "currency": "usd", "confirm": True, "payment_method": "pm_card_visa"}
ISSUE = {"vendor": "stripe", "daily_usd_cap": 100, "allowed_endpoints": ["POST /v1/payment_intents"],
         "expires_in": "1h", "agent_run_label": "trigger.dev/billing-agent/run_1"}
TEAM_CEILINGS = ("--vendor", "stripe", "--allow", "POST /v1/payment_intents/**", "--max-daily-usd-cap", "100",
                 "--max-ttl", "2h")


def client_for(home, proxy, name: str) -> httpx.Client:
    token = json.loads(keybrake(home, "admin-token", "create", "--name", name, *TEAM_CEILINGS, "--json").stdout)
    assert token["scope"]["vendors"] == ["stripe"]
    return httpx.Client(base_url=proxy.api_url, headers={"authorization": f"Bearer {token['token']}"}, timeout=30)


def test_a_scoped_token_cannot_see_revoke_or_replay_another_tokens_key(home, api_proxy, stripe_client_for_proxy):
    team_a, team_b = client_for(home, api_proxy, "team-a"), client_for(home, api_proxy, "team-b")
    theirs = team_b.post("/vault/keys", json=ISSUE, headers={"idempotency-key": "billing-agent/run_1"})
    assert theirs.status_code == 201
    key_id = theirs.json()["key_id"]

    assert team_a.get(f"/vault/keys/{key_id}").status_code == 404
    assert team_a.get("/vault/keys").json()["data"] == []
    assert team_a.delete(f"/vault/keys/{key_id}").status_code == 404
    assert team_a.delete("/vault/keys", params={"label": ISSUE["agent_run_label"]}).json() == {"revoked": []}
    # The same Idempotency-Key and body from team A: a key of its own, never team B's.
    replayed = team_a.post("/vault/keys", json=ISSUE, headers={"idempotency-key": "billing-agent/run_1"})
    assert replayed.status_code == 201 and "idempotent-replayed" not in replayed.headers
    assert replayed.json()["key_id"] != key_id and replayed.json()["vault_key"] != theirs.json()["vault_key"]
    # Over a ceiling: 403 naming the field.
    over = team_a.post("/vault/keys", json={**ISSUE, "allowed_endpoints": ["POST /v1/refunds"]})
    assert (over.status_code, over.json()["error"]["field"]) == (403, "allowed_endpoints")

    # Team B's key still works through the proxy, and team B still sees and replays it.
    intent = stripe_client_for_proxy(api_proxy)(theirs.json()["vault_key"]).v1.payment_intents.create(params=PI)
    assert intent.status == "succeeded"
    assert team_b.get(f"/vault/keys/{key_id}").json()["spent_usd"] == "50.00"
    again = team_b.post("/vault/keys", json=ISSUE, headers={"idempotency-key": "billing-agent/run_1"})
    assert (again.status_code, again.json()["vault_key"]) == (200, theirs.json()["vault_key"])
    # Team A's audit holds nothing of team B's call.
    assert team_a.get("/vault/audit").json()["data"] == []
    assert [row["key_id"] for row in team_b.get("/vault/audit").json()["data"]] == [key_id]
