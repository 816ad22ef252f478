"""Edges of the proxy: a locked database, strict egress, header hygiene."""

import sqlite3
import ssl

import httpx
import pytest
import stripe

from keybrake_addon.proxy_process import ProxyProcess

from .raw_sockets import exchange_through_proxy

PI = {"amount": 5000, "currency": "usd", "confirm": True, "payment_method": "pm_card_visa"}


def vendor_client(proxy, home) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(home / "certs" / "keybrake-ca.pem"))
    return httpx.Client(proxy=proxy.url, verify=context, base_url="https://api.stripe.com")


def test_locked_database_answers_503_and_forwards_nothing(home, fake_stripe, tmp_path, monkeypatch, issue):
    key = issue("--total-usd-cap", "500", "--allow", "POST /v1/payment_intents")
    proxy = ProxyProcess(home=home, upstreams=(f"stripe={fake_stripe.url}",), log_path=tmp_path / "p.log",
                         extra_args=("--db-busy-timeout", "0.3")).start()
    try:
        blocker = sqlite3.connect(home / "keybrake.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock past the busy timeout
        with vendor_client(proxy, home) as client:
            refused = client.post("/v1/payment_intents", data=PI,
                                  headers={"authorization": f"Bearer {key['vault_key']}"})
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "2"
            assert refused.json()["error"]["code"] == "keybrake_unavailable"
            assert fake_stripe.hits == 0
            blocker.execute("ROLLBACK")  # the trouble ends: the proxy recovers by itself
            accepted = client.post("/v1/payment_intents", data=PI,
                                   headers={"authorization": f"Bearer {key['vault_key']}"})
            assert accepted.status_code == 200
    finally:
        proxy.stop()
    assert key["vault_key"] not in proxy.log_text()


def test_keybrake_request_headers_are_stripped(proxy, fake_stripe, home, issue):
    key = issue("--total-usd-cap", "500", "--allow", "GET /v1/balance")
    with vendor_client(proxy, home) as client:
        response = client.get("/v1/balance", headers={"authorization": f"Bearer {key['vault_key']}",
                                                      "x-keybrake-cap-hit": "false", "X-Keybrake-Anything": "1"})
    assert response.status_code == 200
    (seen,) = fake_stripe.received
    assert not [name for name in seen.headers if name.startswith("x-keybrake")]


def test_strict_egress_refuses_other_hosts(home, fake_stripe, tmp_path, tls_echo_server):
    proxy = ProxyProcess(home=home, upstreams=(f"stripe={fake_stripe.url}",), log_path=tmp_path / "p.log",
                         extra_args=("--strict-egress",)).start()
    url, cert_path = tls_echo_server
    try:
        with httpx.Client(proxy=proxy.url, verify=ssl.create_default_context(cafile=str(cert_path))) as client:
            with pytest.raises(httpx.ProxyError):
                client.get(url)
        # Plain-HTTP proxying needs no CONNECT: it is refused too, before anything is sent on.
        hits = fake_stripe.hits
        with httpx.Client(proxy=proxy.url) as client:
            answer = client.get(f"{fake_stripe.url}/v1/balance")
        assert answer.status_code == 403 and "egress policy 'deny'" in answer.text
        assert fake_stripe.hits == hits
    finally:
        proxy.stop()


def test_unpriced_endpoint_is_refused_unless_allowed(proxy, fake_stripe, stripe_client_for, issue):
    strict = issue("--total-usd-cap", "500", "--allow-all")
    with pytest.raises(stripe.PermissionError) as refused:
        stripe_client_for(strict["vault_key"]).v1.subscriptions.create(params={"customer": "cus_1"})
    assert refused.value.json_body["error"]["code"] == "keybrake_unpriced_endpoint"
    assert fake_stripe.hits == 0


def test_an_unexpected_error_in_the_gate_refuses_instead_of_forwarding(home, fake_stripe, tmp_path, issue):
    key = issue("--total-usd-cap", "500", "--allow", "POST /v1/payment_intents")
    with sqlite3.connect(home / "keybrake.db") as db:  # a damaged row the gate cannot read
        db.execute("UPDATE vault_keys SET allowlist = 'not json'")
    proxy = ProxyProcess(home=home, upstreams=(f"stripe={fake_stripe.url}",), log_path=tmp_path / "p.log").start()
    try:
        with vendor_client(proxy, home) as client:
            refused = client.post("/v1/payment_intents", data=PI, headers={"authorization": f"Bearer {key['vault_key']}"})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "keybrake_unavailable"
        assert fake_stripe.hits == 0
    finally:
        proxy.stop()
    log = proxy.log_text()
    # The ledger's thread isolates the call it cannot decide: refused, named, and no text of the row.
    assert "the ledger failed on one item (unexpected JSONDecodeError at " in log
    assert "not json" not in log
    assert key["vault_key"] not in log


def test_a_repeated_single_valued_header_is_refused_before_anything_is_reserved(proxy, fake_stripe, home, issue):
    key = issue("--total-usd-cap", "500", "--allow", "POST /v1/payment_intents")
    auth = ("authorization", f"Bearer {key['vault_key']}")
    with vendor_client(proxy, home) as client:
        first = client.post("/v1/payment_intents", data=PI, headers=[auth, ("idempotency-key", "order-1")])
        assert first.status_code == 200
        hits = fake_stripe.hits
        # The gate would have matched order-1 and attached this call to the first for $0, while
        # Stripe could read order-2 and move the money again.
        twice = client.post("/v1/payment_intents", data={**PI, "amount": 40000},
                            headers=[auth, ("idempotency-key", "order-1"), ("idempotency-key", "order-2")])
    assert twice.status_code == 400
    error = twice.json()["error"]
    assert error["code"] == "keybrake_invalid_request"
    assert "idempotency-key" in error["message"]
    assert fake_stripe.hits == hits


def test_connected_accounts_query_strings_and_json_bodies_are_refused(proxy, fake_stripe, home, issue):
    key = issue("--total-usd-cap", "500", "--allow-all")
    auth = {"authorization": f"Bearer {key['vault_key']}"}
    with vendor_client(proxy, home) as client:
        connected = client.get("/v1/balance", headers={**auth, "stripe-account": "acct_1Connected"})
        queried = client.post("/v1/payment_intents/pi_1", params={"amount": "500000"}, headers=auth)
        as_json = client.post("/v1/payment_intents", json=PI, headers=auth)
    assert (connected.status_code, connected.json()["error"]["code"]) == (403, "keybrake_account_mismatch")
    assert "Stripe-Account" in connected.json()["error"]["message"]
    assert (queried.status_code, queried.json()["error"]["code"]) == (400, "keybrake_invalid_request")
    assert (as_json.status_code, as_json.json()["error"]["code"]) == (400, "keybrake_invalid_request")
    assert fake_stripe.hits == 0


@pytest.mark.parametrize("line", [
    # An obsolete folded line, which mitmproxy forwarded as it came: a server that unfolds it
    # reads "order-1 order-2" (or only order-2) where the gate matched retries on another value.
    b"Idempotency-Key: order-1\r\n order-2",
    b"Stripe-Account: acct_1Platform\r\n\tacct_1Connected",
])
def test_a_folded_header_line_is_refused(proxy, fake_stripe, home, issue, line):
    """(A space before the colon is refused by mitmproxy itself; the gate's check, unit-tested in
    tests/unit/test_vendor_base.py, refuses it too should that ever change.)"""
    key = issue("--total-usd-cap", "500", "--allow", "POST /v1/payment_intents")
    body = b"amount=5000&currency=usd"
    head = exchange_through_proxy(proxy, home, "api.stripe.com", (
        b"POST /v1/payment_intents HTTP/1.1\r\nHost: api.stripe.com\r\n"
        + f"Authorization: Bearer {key['vault_key']}\r\n".encode()
        + b"Content-Type: application/x-www-form-urlencoded\r\n" + line + b"\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(body) + body))
    assert head.startswith("http/1.1 400") and "x-keybrake-refusal: keybrake_invalid_request" in head
    assert fake_stripe.hits == 0
