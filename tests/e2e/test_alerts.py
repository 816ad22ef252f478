"""Alerts end to end: the real proxy, stripe-python calls crossing a threshold and hitting the cap,
a loopback receiver verifying each webhook with standardwebhooks; the CLI and the vault API."""

import json

import httpx
import pytest
import stripe

from keybrake_addon.proxy_process import ProxyProcess

from support.webhooks import Receiver

from .helpers import keybrake, keybrake_json
from .test_vault_api import conforms

BOTH_BACKENDS = True  # the outbox is written with the money: each test runs on SQLite and on PostgreSQL

PI = {"amount": 5000, "currency": "usd", "confirm": True, "payment_method": "pm_card_visa"}


def test_sdk_calls_crossing_a_threshold_and_hitting_the_cap_reach_the_receiver(proxy, stripe_client_for, issue,
                                                                              home):
    with Receiver() as receiver:
        added = keybrake_json(home, "alerts", "add", receiver.url, "--allow-private", "--thresholds", "80",
                              "--events", "key.threshold_crossed,key.cap_hit", "--events", "key.revoked")
        secret = added["signing_secret"]
        key = issue("--daily-usd-cap", "100", "--allow", "POST /v1/payment_intents", "--label", "billing/run-7")
        client = stripe_client_for(key["vault_key"])
        client.v1.payment_intents.create(params=PI)  # $50 of $100: below 80 %
        client.v1.payment_intents.create(params=PI)  # $100: crosses 80 % (and reaches the cap)
        for _ in range(3):  # three refusals: one cap hit
            with pytest.raises(stripe.RateLimitError):
                client.v1.payment_intents.create(params=PI)
        keybrake(home, "revoke", key["key_id"])  # written by the CLI, delivered by the proxy
        got = receiver.wait_for(3)
    events = {payload["type"]: payload for payload in (r.verified(secret) for r in got)}
    assert sorted(events) == ["key.cap_hit", "key.revoked", "key.threshold_crossed"]
    crossed = events["key.threshold_crossed"]["data"]
    assert crossed == {**crossed, "key_id": key["key_id"], "label": "billing/run-7", "vendor": "stripe",
                       "cap": "daily", "cap_usd": "100.00", "threshold_percent": 80, "used_usd": "100.00"}
    hit = events["key.cap_hit"]["data"]
    assert (hit["cap"], hit["cap_usd"], hit["today_spent_usd"]) == ("daily", "100.00", "100.00")
    assert events["key.revoked"]["data"]["spent_usd"] == "100.00"
    everything = b"".join(r.body for r in got).decode()
    assert key["vault_key"] not in everything and secret not in everything
    delivered = keybrake_json(home, "alerts", "deliveries")
    assert sorted((d["type"], d["state"], d["attempts"]) for d in delivered) == [
        ("key.cap_hit", "delivered", 1), ("key.revoked", "delivered", 1), ("key.threshold_crossed", "delivered", 1)]
    assert len({r.id for r in got}) == 3


def test_the_cli_tests_lists_and_retries_by_hand(home, issue):
    with Receiver(statuses=(500,)) as receiver:
        added = keybrake_json(home, "alerts", "add", receiver.url, "--allow-private", "--events", "key.revoked")
        secret, subscription_id = added["signing_secret"], added["id"]
        listed = keybrake(home, "alerts", "list").stdout
        assert subscription_id in listed and secret not in listed and "whsec_" not in listed

        refused = keybrake(home, "alerts", "test", subscription_id, check=False)
        assert refused.returncode == 1 and "HTTP 500" in refused.stderr
        receiver.answer(200)
        tested = keybrake_json(home, "alerts", "test", subscription_id)
        assert tested["delivered"] and tested["status"] == 200
        assert receiver.received[-1].verified(secret)["type"] == "alert.test"

        receiver.answer(503)
        key = issue("--total-usd-cap", "10", "--allow", "POST /v1/payment_intents", "--label", "cli-run")
        keybrake(home, "revoke", key["key_id"])  # no proxy runs: the event waits in the outbox
        (pending,) = keybrake_json(home, "alerts", "deliveries")
        assert (pending["type"], pending["state"], pending["attempts"]) == ("key.revoked", "pending", 0)
        assert keybrake_json(home, "alerts", "deliveries", "--failed") == []

        again = keybrake(home, "alerts", "deliveries", "retry", pending["id"], check=False)
        assert again.returncode == 1 and "HTTP 503" in again.stderr and "next automatic attempt" in again.stderr
        (failed,) = keybrake_json(home, "alerts", "deliveries", "--failed")
        assert (failed["id"], failed["attempts"], failed["last_status"]) == (pending["id"], 1, 503)

        receiver.answer(200)
        retried = keybrake_json(home, "alerts", "deliveries", "retry", pending["id"])
        assert (retried["state"], retried["last_status"], retried["attempts"]) == ("delivered", 200, 2)
        assert receiver.received[-1].verified(secret)["data"]["key_id"] == key["key_id"]
        assert keybrake_json(home, "alerts", "deliveries", "--failed") == []

        assert keybrake_json(home, "alerts", "remove", subscription_id)["removed"] == [subscription_id]
        assert keybrake_json(home, "alerts", "list") == []
        missing = keybrake(home, "alerts", "remove", subscription_id, check=False)
        assert missing.returncode == 1 and "no active alert subscription" in missing.stderr


def test_adding_refuses_what_cannot_be_a_receiver(home):
    for args, complaint in [(("http://127.0.0.1:9/",), "--allow-private"),
                            (("http://169.254.169.254/latest",), "metadata"),
                            (("ftp://example.com/",), "http:// or https://"),
                            (("https://user:pw@example.com/",), "no user or password"),
                            (("https://example.com/", "--thresholds", "0"), "1 to 100"),
                            (("https://example.com/", "--events", "key.spent"), "unknown event")]:
        refused = keybrake(home, "alerts", "add", *args, check=False)
        assert refused.returncode == 2 and complaint in refused.stderr, (args, refused.stderr)


@pytest.fixture
def api(home, fake_stripe, tmp_path):
    proxy = ProxyProcess(home=home, upstreams=(f"stripe={fake_stripe.url}",), log_path=tmp_path / "proxy.log",
                         extra_args=("--api-port", "0")).start()
    token = json.loads(keybrake(home, "admin-token", "create", "--name", "tests", "--json").stdout)["token"]
    with httpx.Client(base_url=proxy.api_url, headers={"authorization": f"Bearer {token}"}, timeout=30) as client:
        yield client
    proxy.stop()


def test_the_vault_api_manages_alerts(api):
    with Receiver() as receiver:
        made = api.post("/vault/alerts", json={"url": receiver.url, "allow_private": True, "thresholds": [80],
                                               "events": ["key.threshold_crossed", "key.revoked"], "format": "slack"})
        assert made.status_code == 201, made.text
        created = conforms(made, "/vault/alerts", "post")
        secret, subscription_id = created["signing_secret"], created["id"]
        listed = conforms(api.get("/vault/alerts"), "/vault/alerts", "get")
        assert [s["id"] for s in listed["data"]] == [subscription_id] and "whsec_" not in json.dumps(listed)
        shown = conforms(api.get(f"/vault/alerts/{subscription_id}"), "/vault/alerts/{subscription_id}", "get")
        assert shown["format"] == "slack"

        tested = conforms(api.post(f"/vault/alerts/{subscription_id}/test"), "/vault/alerts/{subscription_id}/test",
                          "post")
        assert tested["delivered"] and "text" in receiver.received[-1].verified(secret)

        issued = api.post("/vault/keys", json={"vendor": "stripe", "total_usd_cap": 10, "allow_all": True,
                                               "agent_run_label": "api-run"}).json()
        api.delete(f"/vault/keys/{issued['key_id']}")
        receiver.wait_for(2)  # the proxy's deliverer sends the revocation
        assert "was revoked" in receiver.received[-1].verified(secret)["text"]
        deliveries = conforms(api.get("/vault/alerts/deliveries"), "/vault/alerts/deliveries", "get")["data"]
        (revoked,) = deliveries
        assert revoked["type"] == "key.revoked"
        retry = api.post(f"/vault/alerts/deliveries/{revoked['id']}/retry")
        assert retry.status_code == 409 and conforms(retry, "/vault/alerts/deliveries/{delivery_id}/retry", "post")
        assert conforms(api.get("/vault/alerts/deliveries", params={"failed": "true"}),
                        "/vault/alerts/deliveries", "get")["data"] == []

        bad = api.post("/vault/alerts", json={"url": "http://10.0.0.8/hook"})  # private, without allow_private
        assert bad.status_code == 422 and conforms(bad, "/vault/alerts", "post")["error"]["field"] == "url"
        unknown = api.post("/vault/alerts", json={"url": "https://example.com/", "colour": "red"})
        assert unknown.status_code == 400
        assert api.put("/vault/alerts").status_code == 405
        removed = conforms(api.delete(f"/vault/alerts/{subscription_id}"), "/vault/alerts/{subscription_id}",
                           "delete")
        assert removed["removed"] == [subscription_id]
        assert api.get(f"/vault/alerts/{subscription_id}").status_code == 404
