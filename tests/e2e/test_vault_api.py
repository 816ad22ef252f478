"""The vault HTTP API and the base-URL routes, on a running proxy, checked against the OpenAPI description."""

import json
import threading
import time

import httpx
import jsonschema
import pytest
import stripe

from keybrake_addon.api.openapi import OPENAPI
from keybrake_addon.proxy_process import ProxyProcess

from .helpers import REAL_SECRET, keybrake

PI = {"amount": 5000, "currency": "usd", "confirm": True, "payment_method": "pm_card_visa"}
ISSUE = {"vendor": "stripe", "daily_usd_cap": 500, "allowed_endpoints": ["POST /v1/payment_intents"],
         "expires_in": "2h", "agent_run_label": "trigger.dev/billing-agent/run_1"}


def conforms(response: httpx.Response, path: str, method: str) -> dict | list:
    """Validate an answer against the OpenAPI response schema for its status."""
    operation = OPENAPI["paths"][path][method.lower()]
    spec = operation["responses"][str(response.status_code)]
    schema = {**spec["content"]["application/json"]["schema"], "components": OPENAPI["components"]}
    resolver_root = {"components": OPENAPI["components"], **schema}
    jsonschema.validate(response.json(), resolver_root)
    return response.json()


def running_api(home, upstream: str, log_path):
    proxy = ProxyProcess(home=home, upstreams=(f"stripe={upstream}",), log_path=log_path,
                         extra_args=("--api-port", "0")).start()
    token = json.loads(keybrake(home, "admin-token", "create", "--name", "tests", "--json").stdout)["token"]
    try:
        with httpx.Client(base_url=proxy.api_url, headers={"authorization": f"Bearer {token}"}, timeout=30) as client:
            client.proxy = proxy
            yield client
    finally:
        proxy.stop()


@pytest.fixture
def api(home, fake_stripe, tmp_path):
    yield from running_api(home, fake_stripe.url, tmp_path / "proxy.log")


@pytest.fixture(scope="module")
def refusing_api(tmp_path_factory):
    """One proxy for the cases that are refused before anything is written: they cannot disturb
    each other, and a proxy apiece cost ~1 s each."""
    root = tmp_path_factory.mktemp("refusing-api")
    keybrake(root / "home", "init")
    keybrake(root / "home", "secret", "set", "stripe", stdin=REAL_SECRET + "\n")
    yield from running_api(root / "home", "http://127.0.0.1:9", root / "proxy.log")  # never reached


def test_issue_show_list_and_revoke(api, fake_stripe):
    issued = conforms(api.post("/vault/keys", json=ISSUE), "/vault/keys", "post")
    assert issued["vault_key"].startswith("sk_kb_") and issued["label"] == ISSUE["agent_run_label"]
    assert issued["expires_at"].endswith("Z") and issued["daily_usd_cap"] == "500.00"
    key_id = issued["key_id"]

    shown = conforms(api.get(f"/vault/keys/{key_id}"), "/vault/keys/{key_id}", "get")
    assert (shown["spent_usd"], shown["reserved_usd"], shown["remaining_usd"]) == ("0.00", "0.00", "500.00")
    listed = conforms(api.get("/vault/keys", params={"label": ISSUE["agent_run_label"], "active": "true"}),
                      "/vault/keys", "get")
    assert [k["key_id"] for k in listed["data"]] == [key_id]

    assert conforms(api.delete(f"/vault/keys/{key_id}"), "/vault/keys/{key_id}", "delete") == {"revoked": [key_id]}
    assert api.delete(f"/vault/keys/{key_id}").status_code == 200  # revoking twice is fine
    assert api.get("/vault/keys", params={"active": "true"}).json()["data"] == []
    assert conforms(api.get("/vault/keys/kbk_nope"), "/vault/keys/{key_id}", "get")["error"]["code"] == "not_found"


def test_idempotent_issuance_returns_the_same_key(api):
    first = api.post("/vault/keys", json=ISSUE, headers={"idempotency-key": "run_1"})
    again = api.post("/vault/keys", json=ISSUE, headers={"idempotency-key": "run_1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.headers["idempotent-replayed"] == "true"
    assert conforms(again, "/vault/keys", "post")["vault_key"] == first.json()["vault_key"]
    other = api.post("/vault/keys", json={**ISSUE, "daily_usd_cap": 900}, headers={"idempotency-key": "run_1"})
    assert other.status_code == 409
    assert api.post("/vault/keys", json=ISSUE).json()["key_id"] != first.json()["key_id"]


def test_concurrent_retries_of_one_issuance_get_one_key(api):
    results = []

    def issue():
        results.append(api.post("/vault/keys", json=ISSUE, headers={"idempotency-key": "race"}).json()["key_id"])

    threads = [threading.Thread(target=issue) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 8


@pytest.mark.parametrize("body, field", [
    ({**ISSUE, "daily_usd_cap": -5}, "daily_usd_cap"),
    ({**ISSUE, "total_usd_cap": "lots"}, "total_usd_cap"),
    ({**ISSUE, "expires_in": "2 weeks"}, "expires_in"),
    ({**ISSUE, "vendor": "paypal"}, "vendor"),
    ({**ISSUE, "allowed_endpoints": ["POST v1/payment_intents"]}, "allowed_endpoints"),
    ({**ISSUE, "surprise": True}, "surprise"),
    ({**ISSUE, "max_calls": -1}, "max_calls"),
    ({k: v for k, v in ISSUE.items() if k != "vendor"}, "vendor"),
    ([ISSUE], "body"),
    ({**ISSUE, "vendor": None}, "vendor"),
    ({**ISSUE, "daily_usd_cap": 1e30}, "daily_usd_cap"),
    ({**ISSUE, "max_calls": 99999999999999999999999}, "max_calls"),
    ({**ISSUE, "agent_run_label": "run_1\x1b]0;owned\x07"}, "agent_run_label"),
    ({**ISSUE, "agent_run_label": "run_1\nrun_2"}, "agent_run_label"),
])
def test_validation_names_the_field(refusing_api, body, field):
    response = refusing_api.post("/vault/keys", json=body)
    assert response.status_code == 400
    assert conforms(response, "/vault/keys", "post")["error"]["field"] == field


@pytest.mark.parametrize("body, field", [
    ({**ISSUE, "allowed_endpoints": []}, "allowed_endpoints"),
    ({k: v for k, v in ISSUE.items() if k != "daily_usd_cap"}, "daily_usd_cap"),
    ({**ISSUE, "expires_in": "99999999999d"}, "expires_in"),
    ({**ISSUE, "secret": "nobody-stored-this"}, "secret"),
])
def test_a_request_that_fits_the_description_but_breaks_a_rule_it_cannot_state_is_a_422(refusing_api, body,
                                                                                          field):
    response = refusing_api.post("/vault/keys", json=body)
    assert response.status_code == 422
    assert conforms(response, "/vault/keys", "post")["error"]["field"] == field


def test_bad_json_and_big_bodies(api):
    assert api.post("/vault/keys", content=b"{not json").json()["error"]["code"] == "invalid_json"
    too_big = api.post("/vault/keys", content=b"x" * (65 * 1024))
    assert too_big.status_code == 413 and conforms(too_big, "/vault/keys", "post")["error"]["code"] == "body_too_large"
    with pytest.raises(httpx.TransportError):  # far too big to read: the connection is closed
        api.post("/vault/keys", content=b"x" * (2 * 1024 * 1024))
    # One addon cuts it off; another trying too would log a traceback for each such request.
    assert "Traceback" not in api.proxy.log_text()


def test_auth_failures_are_401_and_slowed_down(api):
    bare = httpx.Client(base_url=api.proxy.api_url, timeout=30)
    assert bare.get("/vault/keys").status_code == 401
    wrong = {"authorization": "Bearer kba_wrong"}
    timings = []
    for _ in range(8):
        started = time.monotonic()
        response = bare.get("/vault/keys", headers=wrong)
        timings.append(time.monotonic() - started)
        assert response.status_code == 401
        conforms(response, "/vault/keys", "get")
    assert sum(timings[-3:]) > 0.5  # failures 6-8 from one address wait 0.2 + 0.4 + 0.8 s
    assert api.get("/vault/keys").status_code == 200  # a good token still works
    assert bare.get("/vault/openapi.json").json()["openapi"] == "3.1.0"


def test_revoke_by_label_cuts_off_every_key_of_the_run(api, home, stripe_client_for_proxy):
    keys = [api.post("/vault/keys", json={**ISSUE, "agent_run_label": "run-9"}).json() for _ in range(3)]
    client = stripe_client_for_proxy(api.proxy)
    client(keys[0]["vault_key"]).v1.payment_intents.create(params=PI)
    revoked = conforms(api.delete("/vault/keys", params={"label": "run-9"}), "/vault/keys", "delete")
    assert sorted(revoked["revoked"]) == sorted(k["key_id"] for k in keys)
    for key in keys:
        with pytest.raises(stripe.AuthenticationError):
            client(key["vault_key"]).v1.payment_intents.create(params=PI)
    assert api.delete("/vault/keys").status_code == 400  # no label: never "revoke everything"


def test_audit_and_spend_endpoints(api, stripe_client_for_proxy):
    key = api.post("/vault/keys", json={**ISSUE, "daily_usd_cap": 60, "agent_run_label": "run-a"}).json()
    client = stripe_client_for_proxy(api.proxy)(key["vault_key"])
    intent = client.v1.payment_intents.create(params=PI)
    with pytest.raises(stripe.RateLimitError):
        client.v1.payment_intents.create(params=PI)
    audit = conforms(api.get("/vault/audit", params={"label": "run-a"}), "/vault/audit", "get")["data"]
    assert [(r["decision"], r["object_id"]) for r in audit] == [("allowed", intent.id), ("keybrake_cap_exceeded", None)]
    spend = conforms(api.get("/vault/spend", params={"label": "run-a", "by": "key"}), "/vault/spend", "get")["data"]
    assert spend == [{"key": key["key_id"], "spent_usd": "50.00", "reserved_usd": "0.00", "calls": 2, "allowed": 1,
                      "refused": 1, "cap_hits": 1}]
    assert api.get("/vault/spend", params={"by": "planet"}).json()["error"]["field"] == "by"


def test_base_url_routes_with_stripe_python(api, fake_stripe):
    key = api.post("/vault/keys", json={**ISSUE, "daily_usd_cap": 100}).json()
    client = stripe.StripeClient(key["vault_key"], base_addresses={"api": api.proxy.api_url + "/stripe"},
                                 max_network_retries=0)
    client.v1.payment_intents.create(params=PI)
    client.v1.payment_intents.create(params=PI)
    with pytest.raises(stripe.RateLimitError) as refused:
        client.v1.payment_intents.create(params=PI)
    assert refused.value.headers["x-keybrake-cap-hit"] == "true"
    assert [r.authorization for r in fake_stripe.received] == [f"Bearer {REAL_SECRET}"] * 2
    assert [r.path for r in fake_stripe.received] == ["/v1/payment_intents"] * 2
    # The vendor comes from the path, not the Host header; unknown prefixes go nowhere.
    spoofed = httpx.post(api.proxy.api_url + "/nothing/v1/payment_intents", data=PI,
                         headers={"host": "api.stripe.com", "authorization": f"Bearer {key['vault_key']}"})
    assert spoofed.status_code == 404 and fake_stripe.hits == 2


def test_unprefixed_v1_goes_to_stripe_as_stripe_node_sends_it(api, fake_stripe):
    # stripe-node takes host/port/protocol but no base path: its requests arrive as /v1/...
    key = api.post("/vault/keys", json={**ISSUE, "daily_usd_cap": 50}).json()
    client = stripe.StripeClient(key["vault_key"], base_addresses={"api": api.proxy.api_url},
                                 max_network_retries=0)
    client.v1.payment_intents.create(params=PI)
    with pytest.raises(stripe.RateLimitError):
        client.v1.payment_intents.create(params=PI)
    assert [(r.path, r.authorization) for r in fake_stripe.received] == [("/v1/payment_intents",
                                                                          f"Bearer {REAL_SECRET}")]


def test_a_revoked_admin_token_is_refused_at_once(api, home):
    created = json.loads(keybrake(home, "admin-token", "create", "--name", "short-lived", "--json").stdout)
    listed = json.loads(keybrake(home, "admin-token", "list", "--json").stdout)
    assert {"tests", "short-lived"} <= {row["name"] for row in listed}
    assert created["token"] not in json.dumps(listed)  # only its hash is kept
    with httpx.Client(base_url=api.base_url, headers={"authorization": f"Bearer {created['token']}"}) as client:
        assert client.get("/vault/keys").status_code == 200
        keybrake(home, "admin-token", "revoke", created["token_id"])
        assert client.get("/vault/keys").status_code == 401


def test_undeclared_methods_answer_405_with_allow(api):
    for method, path, allow in (("PUT", "/vault/audit", "GET"), ("POST", "/vault/spend", "GET"),
                                ("PATCH", "/vault/keys", "DELETE, GET, POST"),
                                ("PUT", "/vault/keys/kbk_0123456789ab", "DELETE, GET"),
                                ("DELETE", "/vault/openapi.json", "GET")):
        answer = api.request(method, path)
        assert (answer.status_code, answer.headers.get("allow")) == (405, allow), (method, path)
        assert conforms(answer, "/vault/keys", "get")["error"]["code"] == "method_not_allowed"


def test_a_compressed_body_is_refused_not_inflated(api):
    import gzip

    answer = api.post("/vault/keys", content=gzip.compress(json.dumps(ISSUE).encode()),
                      headers={"content-encoding": "gzip", "content-type": "application/json"})
    assert (answer.status_code, answer.json()["error"]["code"]) == (415, "unsupported_encoding")
    assert api.get("/vault/keys").json()["data"] == []
