"""The access log end to end: a real proxy, stripe-python through it, the log searched afterwards.

A success, a cap hit and a keyless refusal each leave one line with their facts; no vendor
secret, vault key, worker token (the Proxy-Authorization password), admin token or master key
appears anywhere in what the proxy wrote.
"""

import base64
import json

import httpx
import pytest
import stripe

from keybrake_addon.proxy_process import ProxyProcess

from .helpers import REAL_SECRET, keybrake_json

PI = {"amount": 5000, "currency": "usd", "confirm": True, "payment_method": "pm_card_visa"}
LABEL = "trigger.dev/billing-agent/run_7"


@pytest.fixture
def no_proxy_env(monkeypatch, home):
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    # the home has the CA bundle stripe-python is pointed at (`keybrake env` wrote it)
    monkeypatch.setattr(stripe, "ca_bundle_path", str(home / "certs" / "keybrake-ca-bundle.pem"))


def access_lines(text: str) -> list[dict]:
    """The JSON access lines among everything the proxy printed."""
    return [json.loads(line) for line in text.splitlines() if line.startswith('{"ts"')]


def test_each_call_and_refusal_leaves_one_json_line_and_no_secret(home, fake_stripe, tmp_path, no_proxy_env):
    # No --access-log: in a pipe (as here) the default is JSON on stderr.
    proxy = ProxyProcess(home=home, upstreams=(f"stripe={fake_stripe.url}",), log_path=tmp_path / "proxy.log",
                         extra_args=("--proxy-auth", "required", "--api-port", "0")).start()
    try:
        admin_token = keybrake_json(home, "admin-token", "create", "--name", "ci")["token"]
        worker_token = keybrake_json(home, "worker-token", "create", "--name", "ci")["token"]
        with httpx.Client(base_url=proxy.api_url, headers={"authorization": f"Bearer {admin_token}"}) as api:
            issued = api.post("/vault/keys", json={
                "vendor": "stripe", "total_usd_cap": 60, "allowed_endpoints": ["POST /v1/payment_intents"],
                "agent_run_label": LABEL}).json()
        proxy_url = f"http://worker:{worker_token}@127.0.0.1:{proxy.port}"
        client = stripe.StripeClient(issued["vault_key"], proxy=proxy_url, max_network_retries=0)

        intent = client.v1.payment_intents.create(params=PI)  # $50 of a $60 cap
        with pytest.raises(stripe.RateLimitError):
            client.v1.payment_intents.create(params=PI)  # another $50: the cap
        keyless = stripe.StripeClient("", proxy=proxy_url, max_network_retries=0)
        with pytest.raises(stripe.AuthenticationError) as refused:
            keyless.v1.payment_intents.create(params=PI)
        assert refused.value.headers["x-keybrake-refusal"] == "keybrake_missing_key"
    finally:
        proxy.stop()

    log = proxy.log_text()
    success, cap_hit, no_key = access_lines(log)
    assert {k: v for k, v in success.items() if k not in ("ts", "duration_ms")} == {
        "event": "call", "vendor": "stripe", "method": "POST", "path": "/v1/payment_intents", "status": 200,
        "decision": "allowed", "outcome": "settled", "key_id": issued["key_id"], "label": LABEL,
        "reserved_usd": "50.00", "actual_usd": "50.00", "object_id": intent.id}
    assert success["duration_ms"] > 0 and success["ts"].endswith("Z")
    assert (cap_hit["event"], cap_hit["decision"], cap_hit["status"], cap_hit["key_id"], cap_hit["label"]) == (
        "refusal", "keybrake_cap_exceeded", 429, issued["key_id"], LABEL)
    assert (no_key["decision"], no_key["status"], no_key["key_id"], no_key["label"]) == (
        "keybrake_missing_key", 401, None, None)
    proxy_authorization = base64.b64encode(f"worker:{worker_token}".encode()).decode()
    master_key = (home / "master.key").read_text().strip()
    for secret in (REAL_SECRET, issued["vault_key"], worker_token, proxy_authorization, admin_token, master_key):
        assert secret not in log
        assert secret[-16:] not in log  # not even a part of one


def test_text_lines_go_to_the_access_log_file_only(home, fake_stripe, tmp_path, no_proxy_env, issue):
    access_log = tmp_path / "access.log"
    proxy = ProxyProcess(home=home, upstreams=(f"stripe={fake_stripe.url}",), log_path=tmp_path / "proxy.log",
                         extra_args=("--access-log", "text", "--access-log-file", str(access_log))).start()
    try:
        key = issue("--total-usd-cap", "500", "--allow", "POST /v1/payment_intents", "--label", "run a")
        client = stripe.StripeClient(key["vault_key"], proxy=proxy.url, max_network_retries=0)
        intent = client.v1.payment_intents.create(params=PI)
    finally:
        proxy.stop()
    (line,) = access_log.read_text().splitlines()
    assert line.startswith("ts=") and " event=call vendor=stripe method=POST path=/v1/payment_intents status=200 " \
        f"decision=allowed outcome=settled key_id={key['key_id']} label=\"run a\" reserved_usd=50.00 " \
        f"actual_usd=50.00 object_id={intent.id} duration_ms=" in line
    assert "event=" not in proxy.log_text() and key["vault_key"] not in line


def test_a_bad_access_log_file_stops_the_proxy_with_a_clear_error(home, tmp_path):
    proxy = ProxyProcess(home=home, upstreams=(), log_path=tmp_path / "proxy.log",
                         extra_args=("--access-log-file", str(tmp_path / "no-such-dir" / "access.log")))
    with pytest.raises(AssertionError, match="cannot open"):
        proxy.start()
