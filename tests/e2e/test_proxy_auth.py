"""The forward proxy with `--proxy-auth required`: no credential, no tunnel, no vendor call.

Workers authenticate the way their SDKs already can: the proxy URL's userinfo, with a worker
token or the worker's own vault key as the password (any user name).
"""

import socket
import time

import httpx
import pytest
import stripe

from keybrake_addon.ledger.base import AuditFilter
from keybrake_addon.proxy_auth import CREDENTIAL_CACHE_S
from keybrake_addon.proxy_process import ProxyProcess

from .helpers import keybrake, keybrake_json


@pytest.fixture
def auth_proxy(home, fake_stripe, tmp_path, monkeypatch):
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    # the home has the CA bundle stripe-python is pointed at (`keybrake env` wrote it)
    monkeypatch.setattr(stripe, "ca_bundle_path", str(home / "certs" / "keybrake-ca-bundle.pem"))
    running = ProxyProcess(home=home, upstreams=(f"stripe={fake_stripe.url}",), log_path=tmp_path / "proxy.log",
                           extra_args=("--proxy-auth", "required")).start()
    yield running
    running.stop()


@pytest.fixture
def vault_key(issue) -> str:
    return issue("--total-usd-cap", "500", "--allow", "GET /v1/balance")["vault_key"]


def with_password(proxy: ProxyProcess, password: str) -> str:
    return f"http://worker:{password}@127.0.0.1:{proxy.port}"


def stripe_through(proxy_url: str, vault_key: str) -> stripe.StripeClient:
    return stripe.StripeClient(vault_key, proxy=proxy_url, max_network_retries=0)


def raw_connect(proxy: ProxyProcess, target: str, authorization: str | None = None) -> str:
    """The proxy's answer head to a CONNECT, read off a plain socket."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as conn:
        extra = f"Proxy-Authorization: {authorization}\r\n" if authorization else ""
        conn.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                break
            head += chunk
    return head.decode("latin-1")


def basic(password: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"worker:{password}".encode()).decode()


def test_without_a_credential_nothing_reaches_the_vendor(auth_proxy, fake_stripe, vault_key, ledger_of):
    with pytest.raises(stripe.APIConnectionError) as refused:
        stripe_through(auth_proxy.url, vault_key).v1.balance.retrieve()
    assert "407" in str(refused.value)
    with pytest.raises(stripe.APIConnectionError):  # a wrong password is no better
        stripe_through(with_password(auth_proxy, "kbw_wrong"), vault_key).v1.balance.retrieve()
    # A vendor host asked for in plain HTTP (no CONNECT): refused before the gate reserves anything.
    with httpx.Client(proxy=auth_proxy.url) as client:
        plain = client.get("http://api.stripe.com/v1/balance", headers={"authorization": f"Bearer {vault_key}"})
    assert plain.status_code == 407
    head = raw_connect(auth_proxy, "api.stripe.com:443")
    assert head.startswith("HTTP/1.1 407") and 'proxy-authenticate: basic realm="keybrake"' in head.lower()
    assert fake_stripe.hits == 0
    assert ledger_of().audit_rows(AuditFilter()) == []  # refused before Keybrake looked at anything
    assert vault_key not in auth_proxy.log_text()


def test_a_worker_token_opens_the_proxy_until_it_is_revoked(auth_proxy, fake_stripe, vault_key, home):
    created = keybrake_json(home, "worker-token", "create", "--name", "ci")
    assert created["token"].startswith("kbw_")
    client = stripe_through(with_password(auth_proxy, created["token"]), vault_key)
    assert client.v1.balance.retrieve().object == "balance"
    assert fake_stripe.hits == 1

    keybrake(home, "worker-token", "revoke", created["token_id"])
    time.sleep(CREDENTIAL_CACHE_S + 0.5)  # the bound the README promises
    # The kept-alive tunnel is cut, and a new one is refused.
    with pytest.raises(stripe.APIConnectionError):
        client.v1.balance.retrieve()
    with pytest.raises(stripe.APIConnectionError) as refused:
        stripe_through(with_password(auth_proxy, created["token"]), vault_key).v1.balance.retrieve()
    assert "407" in str(refused.value)
    assert fake_stripe.hits == 1
    assert created["token"] not in auth_proxy.log_text()


def test_a_vault_key_is_a_proxy_password_too(auth_proxy, fake_stripe, vault_key, home):
    assert stripe_through(with_password(auth_proxy, vault_key), vault_key).v1.balance.retrieve().object == "balance"
    assert fake_stripe.hits == 1
    keybrake(home, "revoke", keybrake_json(home, "keys", "list")[0]["key_id"])
    time.sleep(CREDENTIAL_CACHE_S + 0.5)
    with pytest.raises(stripe.APIConnectionError) as refused:
        stripe_through(with_password(auth_proxy, vault_key), vault_key).v1.balance.retrieve()
    assert "407" in str(refused.value)


def test_no_open_relay_for_other_hosts(auth_proxy, fake_stripe, home):
    target = f"127.0.0.1:{fake_stripe.url.rsplit(':', 1)[1]}"  # not a vendor host: would be a blind tunnel
    assert raw_connect(auth_proxy, target).startswith("HTTP/1.1 407")
    assert raw_connect(auth_proxy, target, basic("kbw_guess")).startswith("HTTP/1.1 407")
    # Plain-HTTP proxying (no CONNECT) is refused the same way.
    with httpx.Client(proxy=auth_proxy.url) as client:
        refused = client.get(f"{fake_stripe.url}/v1/balance")
    assert refused.status_code == 407 and refused.headers["proxy-authenticate"] == 'Basic realm="keybrake"'
    assert fake_stripe.hits == 0

    token = keybrake_json(home, "worker-token", "create")["token"]
    assert raw_connect(auth_proxy, target, basic(token)).startswith("HTTP/1.1 200")
    with httpx.Client(proxy=with_password(auth_proxy, token)) as client:
        client.get(f"{fake_stripe.url}/v1/balance")
    (seen,) = fake_stripe.received
    assert "proxy-authorization" not in seen.headers  # the credential is never forwarded


def test_off_loopback_authentication_is_on_by_default(home, fake_stripe, tmp_path):
    exposed = ProxyProcess(home=home, upstreams=(f"stripe={fake_stripe.url}",), log_path=tmp_path / "exposed.log",
                           extra_args=("--listen-host", "0.0.0.0")).start()
    try:
        assert raw_connect(exposed, "api.stripe.com:443").startswith("HTTP/1.1 407")
        assert "Proxy authentication required" in exposed.log_text()
        assert "0.0.0.0" not in exposed.log_text().partition("Worker environment:")[2]
    finally:
        exposed.stop()


def test_an_insecure_open_proxy_says_so_at_start(home, fake_stripe, tmp_path):
    open_proxy = ProxyProcess(home=home, upstreams=(f"stripe={fake_stripe.url}",), log_path=tmp_path / "open.log",
                              extra_args=("--listen-host", "0.0.0.0", "--proxy-auth", "off",
                                          "--insecure-open-proxy")).start()
    try:
        assert "WARNING: INSECURE OPEN PROXY" in open_proxy.log_text()
        assert raw_connect(open_proxy, "api.stripe.com:443").startswith("HTTP/1.1 200")
    finally:
        open_proxy.stop()
