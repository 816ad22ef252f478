"""Forward-proxy authentication: the header, the cache, the slow-down table, the URLs, then the
addon's hooks on mitmproxy's test flows (the ledger played by a set of active hashes)."""

import asyncio
import base64

import pytest
from mitmproxy import exceptions
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow

from keybrake_addon import proxy_auth
from keybrake_addon.home import KeybrakeHome
from keybrake_addon.proxy_auth import (MAX_AUTHORIZATION_CHARS, FailureTable, KeybrakeProxyAuth, PositiveCache,
                                       exposed_forward_hosts, is_loopback, proxy_password)
from keybrake_addon.vault.vault_keys import hash_vault_key
from keybrake_addon.worker_env import env_lines, worker_proxy_url


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def basic(user_password: str) -> str:
    return "Basic " + base64.b64encode(user_password.encode()).decode()


@pytest.mark.parametrize("header, password", [
    (basic("worker:kbw_abc"), "kbw_abc"),
    (basic("anyone-at-all:sk_kb_xyz"), "sk_kb_xyz"),
    (basic(":kbw_abc"), "kbw_abc"),  # an empty user name is fine
    (basic("worker:pass:with:colons"), "pass:with:colons"),
    ("basic " + base64.b64encode(b"w:p").decode(), "p"),  # the scheme is case-insensitive
    ("  Basic   " + base64.b64encode(b"w:p").decode() + " ", "p"),
])
def test_the_password_is_taken_whatever_the_user_name(header, password):
    assert proxy_password(header) == password


@pytest.mark.parametrize("header", [
    "", "Basic", "Basic ", "Bearer kbw_abc", basic("no-colon-here"), basic("worker:"),
    "Basic not*base64!", "Basic " + base64.b64encode(b"w:\xff\xfe").decode(),  # not UTF-8
    basic("w:" + "a" * MAX_AUTHORIZATION_CHARS),  # longer than any real credential: not decoded
])
def test_anything_else_carries_no_password(header):
    assert proxy_password(header) is None


def test_a_positive_answer_is_remembered_only_for_its_time():
    clock = Clock()
    cache = PositiveCache(ttl_s=3.0, clock=clock)
    assert not cache.fresh("h1")
    cache.remember("h1")
    clock.now += 2.9
    assert cache.fresh("h1")
    clock.now += 0.1
    assert not cache.fresh("h1")  # a revoked credential stops working once this has passed
    assert len(cache) == 0


def test_the_cache_is_bounded_and_forgets_the_oldest():
    cache = PositiveCache(ttl_s=60, clock=Clock(), max_entries=3)
    for name in ("a", "b", "c", "d"):
        cache.remember(name)
    assert len(cache) == 3
    assert not cache.fresh("a") and cache.fresh("d")


def test_failures_beyond_the_limit_in_a_window_are_slowed():
    clock = Clock()
    table = FailureTable(clock=clock, limit=10, window_s=60)
    assert [table.record("10.0.0.9") for _ in range(10)] == [False] * 10
    assert table.record("10.0.0.9") and table.record("10.0.0.9")
    assert not table.record("10.0.0.8")  # another address has its own count
    clock.now += 60
    assert not table.record("10.0.0.9")  # a new window starts over


def test_the_failure_table_is_bounded_in_addresses():
    table = FailureTable(clock=Clock(), limit=1, max_addresses=100)
    for n in range(1000):
        table.record(f"10.0.{n // 256}.{n % 256}")
    assert len(table) == 100
    # The first address was forgotten: its next failure is counted afresh, not as its second.
    assert not table.record("10.0.0.0")
    assert len(table) == 100


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.5.5.5", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("", False), ("10.0.0.5", False), ("proxy.internal", False), ("::", False),
])
def test_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_only_forward_listeners_off_loopback_are_exposed():
    assert exposed_forward_hosts(["regular@127.0.0.1:8080", "reverse:http://127.0.0.1:9@0.0.0.0:8081"]) == []
    assert exposed_forward_hosts(["regular@0.0.0.0:8080"]) == ["0.0.0.0"]
    assert exposed_forward_hosts(["regular"]) == ["0.0.0.0"]  # no host: every interface
    assert exposed_forward_hosts(["regular"], default_host="127.0.0.1") == []


def test_the_worker_url_carries_the_credential_place_when_auth_is_on():
    assert worker_proxy_url("http://10.0.0.5:8080", True) == "http://worker:<WORKER_TOKEN>@10.0.0.5:8080"
    assert worker_proxy_url("http://10.0.0.5:8080", False) == "http://10.0.0.5:8080"
    # A URL that already has a credential is the operator's: kept as given.
    assert worker_proxy_url("http://ci:kbw_x@10.0.0.5:8080", True) == "http://ci:kbw_x@10.0.0.5:8080"


@pytest.mark.parametrize("url", ["http://0.0.0.0:8080", "http://[::]:8080", "10.0.0.5:8080", "ftp://h:1"])
def test_a_url_no_worker_can_use_is_refused(url):
    with pytest.raises(ValueError):
        worker_proxy_url(url, True)


def test_env_lines_put_the_credential_in_both_proxy_variables(tmp_path):
    home = KeybrakeHome(tmp_path)
    home.certs.mkdir(parents=True)
    home.ca_cert.write_text("-----BEGIN CERTIFICATE-----\n")
    lines = env_lines(home, "http://proxy.internal:8080", proxy_auth=True)
    assert "export HTTPS_PROXY=http://worker:<WORKER_TOKEN>@proxy.internal:8080" in lines
    assert any(line.startswith("export HTTP_PROXY=http://worker:<WORKER_TOKEN>@proxy.internal:8080") for line in lines)
    assert not any("0.0.0.0" in line for line in lines)


# --- the addon's hooks, on mitmproxy's test flows -------------------------------------------------

class Ledger:
    """Answers the credential check from a set of active hashes, counting the look-ups."""

    def __init__(self, *active: str) -> None:
        self.active = {hash_vault_key(password) for password in active}
        self.lookups = 0
        self.failing = False

    async def __call__(self, credential_hash: str) -> bool:
        self.lookups += 1
        if self.failing:
            raise OSError("the database is down")
        return credential_hash in self.active


def request_flow(authorization: str | None = None, mode: str = "regular"):
    flow = tflow.tflow()
    flow.client_conn.proxy_mode = ProxyMode.parse(mode)
    if authorization is not None:
        flow.request.headers["Proxy-Authorization"] = authorization
    return flow


def run_hook(hook, flow):
    asyncio.run(hook(flow))
    return flow


def test_a_valid_credential_passes_and_is_never_forwarded():
    ledger = Ledger("kbw_good")
    addon = KeybrakeProxyAuth(ledger)
    flow = run_hook(addon.requestheaders, request_flow(basic("anyone:kbw_good")))
    assert flow.response is None and "Proxy-Authorization" not in flow.request.headers
    run_hook(addon.requestheaders, request_flow(basic("anyone:kbw_good")))
    assert ledger.lookups == 1  # the second answer came from the cache


def test_no_or_a_wrong_credential_gets_407_with_the_challenge():
    addon = KeybrakeProxyAuth(Ledger("kbw_good"))
    for flow in (request_flow(), request_flow(basic("worker:kbw_bad"))):
        run_hook(addon.requestheaders, flow)
        assert flow.response.status_code == 407
        assert flow.response.headers["Proxy-Authenticate"] == 'Basic realm="keybrake"'
        assert "Proxy-Authorization" not in flow.request.headers
        # No body: https-proxy-agent (stripe-node's proxy) would hang on one; the hint is in a header.
        assert flow.response.content == b"" and "worker:TOKEN@" in flow.response.headers["x-keybrake-hint"]


def test_a_ledger_that_cannot_answer_refuses():
    ledger = Ledger("kbw_good")
    ledger.failing = True
    flow = run_hook(KeybrakeProxyAuth(ledger).http_connect, request_flow(basic("w:kbw_good")))
    assert flow.response.status_code == 503 and flow.response.content == b""


def test_the_api_listener_is_left_to_its_own_tokens():
    ledger = Ledger()
    flow = run_hook(KeybrakeProxyAuth(ledger).requestheaders,
                    request_flow(mode="reverse:http://127.0.0.1:9@127.0.0.1:8081"))
    assert flow.response is None and ledger.lookups == 0


def test_a_tunnel_is_cut_once_its_credential_is_revoked():
    clock = Clock()
    ledger = Ledger("kbw_good")
    addon = KeybrakeProxyAuth(ledger, clock=clock)
    connect = run_hook(addon.http_connect, request_flow(basic("w:kbw_good")))
    assert connect.response is None
    inner = tflow.tflow()
    inner.client_conn = connect.client_conn  # a request inside the tunnel carries no credential of its own
    assert run_hook(addon.requestheaders, inner).error is None
    ledger.active.clear()  # revoked
    clock.now += proxy_auth.CREDENTIAL_CACHE_S
    later = tflow.tflow()
    later.client_conn = connect.client_conn
    assert run_hook(addon.requestheaders, later).error is not None  # killed


def test_repeated_failures_from_one_address_are_slowed(monkeypatch):
    waits = []

    async def no_real_sleep(seconds):
        waits.append(seconds)

    monkeypatch.setattr(proxy_auth.asyncio, "sleep", no_real_sleep)
    addon = KeybrakeProxyAuth(Ledger(), clock=Clock())
    for _ in range(proxy_auth.SLOW_AFTER_FAILURES + 2):
        assert run_hook(addon.requestheaders, request_flow(basic("w:guess"))).response.status_code == 407
    assert waits == [proxy_auth.SLOW_DOWN_S] * 2


def test_auth_off_on_a_non_loopback_forward_listener_is_refused_unless_insecure():
    addon = KeybrakeProxyAuth(Ledger())
    with taddons.context(addon) as tctx:
        tctx.configure(addon, mode=["regular@127.0.0.1:8080"], keybrake_proxy_auth="off")
        assert not addon.required
        with pytest.raises(exceptions.OptionsError, match="--insecure-open-proxy"):
            tctx.configure(addon, mode=["regular@0.0.0.0:8080"])
        tctx.configure(addon, mode=["regular@0.0.0.0:8080"], keybrake_insecure_open_proxy=True)
        tctx.configure(addon, keybrake_proxy_auth="required", keybrake_insecure_open_proxy=False)
        assert addon.required
