"""Prometheus metrics on a running proxy, after real stripe-python calls, on both ledger backends.

GET /metrics on --metrics-port (no token) and on the API listener (admin token), parsed with
prometheus-client's own parser: the counters move, and no secret, vault key, key id, run label or
path ever shows in the text.
"""

import json
import time

import httpx
import pytest
import stripe
from prometheus_client.parser import text_string_to_metric_families

from keybrake_addon.proxy_process import ProxyProcess

from .helpers import REAL_SECRET, keybrake

BOTH_BACKENDS = True
PI = {"amount": 5000, "currency": "usd", "confirm": True, "payment_method": "pm_card_visa"}
LABEL = "trigger.dev/billing-agent/run_metrics_7f3a"


def series(text: str) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels) -> float:
    return found[name, tuple(sorted(labels.items()))]


def scrape_until(url: str, ready, timeout_s: float = 15.0) -> tuple[str, dict]:
    """The ledger's totals are cached for a few seconds: scrape until they show the calls."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = httpx.get(url, timeout=10).text
        found = series(text)
        if ready(found) or time.monotonic() > deadline:
            return text, found
        time.sleep(0.5)


@pytest.fixture
def proxy(home, fake_stripe, tmp_path):
    running = ProxyProcess(home=home, upstreams=(f"stripe={fake_stripe.url}",), log_path=tmp_path / "proxy.log",
                           extra_args=("--api-port", "0", "--metrics-port", "0")).start()
    yield running
    running.stop()


def test_metrics_follow_real_sdk_calls_and_leak_nothing(proxy, home, issue, stripe_client_for_proxy):
    scrape_url = proxy.metrics_url + "/metrics"
    assert proxy.metrics_url.startswith("http://127.0.0.1:")  # loopback unless --metrics-host says otherwise
    before = series(httpx.get(scrape_url, timeout=10).text)
    assert value(before, "keybrake_requests_total", vendor="stripe", decision="allowed") == 0

    key = issue("--daily-usd-cap", "60", "--allow", "POST /v1/payment_intents", "--label", LABEL)
    client = stripe_client_for_proxy(proxy)
    intent = client(key["vault_key"]).v1.payment_intents.create(params=PI)
    with pytest.raises(stripe.RateLimitError):
        client(key["vault_key"]).v1.payment_intents.create(params=PI)  # over the $60 daily cap
    with pytest.raises(stripe.AuthenticationError):
        client(REAL_SECRET).v1.payment_intents.create(params=PI)  # a real secret is refused

    text, found = scrape_until(scrape_url, lambda f: value(f, "keybrake_spend_usd", vendor="stripe") == 50)
    assert value(found, "keybrake_requests_total", vendor="stripe", decision="allowed") == 1
    assert value(found, "keybrake_requests_total", vendor="stripe", decision="keybrake_cap_exceeded") == 1
    assert value(found, "keybrake_requests_total", vendor="stripe", decision="keybrake_real_secret_refused") == 1
    assert value(found, "keybrake_cap_hits_total", vendor="stripe", cap="usd") == 1
    assert value(found, "keybrake_gate_latency_seconds_count", vendor="stripe", outcome="forwarded") == 1
    assert value(found, "keybrake_gate_latency_seconds_count", vendor="stripe", outcome="refused") == 2
    transactions = sum(value(found, "keybrake_ledger_transaction_seconds_count", mode=m) for m in ("inline", "batch"))
    assert transactions >= 2  # at least the admit and the settlement
    assert value(found, "keybrake_ledger_up") == 1
    assert (value(found, "keybrake_spend_usd", vendor="stripe"), value(found, "keybrake_spend_today_usd",
                                                                       vendor="stripe")) == (50, 50)
    assert value(found, "keybrake_reserved_usd", vendor="stripe") == 0
    assert value(found, "keybrake_reservations_open", vendor="stripe") == 0
    assert value(found, "keybrake_keys_active", vendor="stripe") == 1
    assert value(found, "keybrake_calls_in_flight") == 0
    assert [labels for (name, labels) in found if name == "keybrake_build_info"]

    for secret_or_unbounded in (REAL_SECRET, key["vault_key"], key["key_id"], LABEL, "billing-agent",
                                "payment_intents", intent.id):
        assert secret_or_unbounded not in text

    # The metrics port serves /metrics and nothing else.
    assert httpx.get(proxy.metrics_url + "/vault/keys", timeout=10).status_code == 404
    assert httpx.post(scrape_url, timeout=10).status_code == 405


def test_the_api_listener_serves_metrics_behind_an_admin_token(proxy, home):
    url = proxy.api_url + "/metrics"
    bare = httpx.get(url, timeout=10)
    assert (bare.status_code, bare.headers["www-authenticate"]) == (401, "Bearer")
    assert httpx.get(url, headers={"authorization": "Bearer kba_wrong"}, timeout=10).status_code == 401
    token = json.loads(keybrake(home, "admin-token", "create", "--name", "prometheus", "--json").stdout)["token"]
    scraped = httpx.get(url, headers={"authorization": f"Bearer {token}"}, timeout=10)
    assert scraped.status_code == 200
    found = series(scraped.text)
    assert value(found, "keybrake_ledger_up") == 1 and token not in scraped.text
    # OpenMetrics for a scraper that asks for it (Prometheus does).
    open_metrics = httpx.get(url, headers={"authorization": f"Bearer {token}",
                                           "accept": "application/openmetrics-text; version=1.0.0"}, timeout=10)
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    # A scoped token sees only its own keys; the metrics cover every key.
    scoped = json.loads(keybrake(home, "admin-token", "create", "--name", "team-a", "--vendor", "stripe",
                                 "--json").stdout)["token"]
    refused = httpx.get(url, headers={"authorization": f"Bearer {scoped}"}, timeout=10)
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "scoped_token")
