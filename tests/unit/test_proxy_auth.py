"""The pure parts of forward-proxy authentication: the header, the cache, the slow-down table, the URLs."""

import base64

import pytest

from keybrake_addon.home import KeybrakeHome
from keybrake_addon.proxy_auth import (MAX_AUTHORIZATION_CHARS, FailureTable, PositiveCache, exposed_forward_hosts,
                                       is_loopback, proxy_password)
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
