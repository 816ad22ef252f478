"""Bounds before authentication, on a running proxy: body size, head size and deadline, connection caps.

Each test uses the proxy's default bounds, so that it says what a default installation does.
"""

import json
import resource
import socket
import time

import httpx
import pytest

from keybrake_addon.bound_defaults import DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_CONNS_PER_ADDRESS
from keybrake_addon.proxy_process import ProxyProcess

from .helpers import api_address, keybrake
from .raw_sockets import ENDLESS_LIMIT, MIB, closed_within, rss_mib, send_endless_head
ISSUE = {"vendor": "stripe", "daily_usd_cap": 5, "allowed_endpoints": ["POST /v1/payment_intents"]}


@pytest.fixture
def proxy(api_proxy):
    return api_proxy


def closed_by_peer(sock: socket.socket, within_s: float) -> bool:
    return closed_within(sock, within_s) is not None


def send_chunked(sock: socket.socket, total: int, chunk: int = 64 * 1024) -> int:
    """Sends up to `total` body bytes in chunks; returns how many went out before the proxy hung up."""
    sent = 0
    try:
        while sent < total:
            sock.sendall(b"%x\r\n%s\r\n" % (chunk, b"x" * chunk))
            sent += chunk
        sock.sendall(b"0\r\n\r\n")
    except OSError:
        pass
    return sent


def test_a_big_chunked_body_to_the_vault_api_is_cut_off_unread(proxy):
    before = rss_mib(proxy)
    with socket.create_connection(api_address(proxy)) as sock:
        sock.sendall(b"POST /vault/keys HTTP/1.1\r\nHost: keybrake\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        sent = send_chunked(sock, 10 * MIB)
        assert closed_by_peer(sock, within_s=5)
    assert sent < 10 * MIB, "the proxy took the whole 10 MiB body"
    assert rss_mib(proxy) - before < 4, f"RSS grew from {before:.0f} to {rss_mib(proxy):.0f} MiB"


def test_a_small_chunked_body_to_the_vault_api_is_still_served(proxy, home):
    token = json.loads(keybrake(home, "admin-token", "create", "--json").stdout)["token"]

    def body():
        yield json.dumps(ISSUE).encode()  # a generator body goes out chunked

    answer = httpx.post(proxy.api_url + "/vault/keys", content=body(), timeout=10,
                        headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    assert answer.request.headers["transfer-encoding"] == "chunked"
    assert answer.status_code == 201, answer.text


def test_a_declared_vendor_body_over_the_bound_is_refused_before_it_is_read(proxy, fake_stripe):
    with socket.create_connection(api_address(proxy)) as sock:
        sock.sendall(b"POST /stripe/v1/payment_intents HTTP/1.1\r\nHost: keybrake\r\n"
                     b"Authorization: Bearer sk_kb_not_checked_yet\r\nContent-Length: %d\r\n\r\n" % (64 * MIB))
        assert closed_by_peer(sock, within_s=5)
    assert fake_stripe.received == []


def test_a_request_head_that_never_completes_is_cut_off_at_the_deadline(proxy):
    with socket.create_connection(api_address(proxy)) as sock:
        sock.sendall(b"GET /vault/openapi.json HTTP/1.1\r\nHost: keybrake\r\n")
        started = time.monotonic()
        cut = False
        # One header byte every half second: an idle timeout never fires, the head's deadline does.
        while time.monotonic() - started < DEFAULT_HEADER_TIMEOUT_S + 5 and not cut:
            try:
                sock.sendall(b"X")
            except OSError:
                cut = True
                break
            cut = closed_by_peer(sock, within_s=0.5)
        assert cut, "the connection outlived the header deadline"
        assert time.monotonic() - started >= DEFAULT_HEADER_TIMEOUT_S - 1


def test_an_endless_request_head_is_not_buffered(proxy):
    before = rss_mib(proxy)
    with socket.create_connection(api_address(proxy)) as sock:
        sent = send_endless_head(sock, b"GET /vault/openapi.json HTTP/1.1\r\nHost: keybrake\r\n",
                                 DEFAULT_HEADER_TIMEOUT_S + 5)
    assert sent < ENDLESS_LIMIT, "the proxy read a 64 MiB request head"
    assert rss_mib(proxy) - before < 4, f"RSS grew from {before:.0f} to {rss_mib(proxy):.0f} MiB"


def test_connections_over_the_per_address_cap_are_refused_while_another_address_is_served(proxy):
    address = api_address(proxy)
    held = [socket.create_connection(address) for _ in range(DEFAULT_MAX_CONNS_PER_ADDRESS)]
    try:
        time.sleep(0.5)  # let the proxy accept them all
        with socket.create_connection(address) as one_more:
            assert closed_by_peer(one_more, within_s=3)
        other = socket.create_connection(address, source_address=("127.0.0.2", 0))
        with other:
            other.sendall(b"GET /vault/openapi.json HTTP/1.1\r\nHost: keybrake\r\nConnection: close\r\n\r\n")
            other.settimeout(5)
            assert other.recv(64).startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.5)
    with socket.create_connection(address) as again:  # a freed slot serves again
        again.sendall(b"GET /vault/openapi.json HTTP/1.1\r\nHost: keybrake\r\nConnection: close\r\n\r\n")
        again.settimeout(5)
        assert again.recv(64).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("chunked", [False, True])
def test_a_big_vendor_body_under_the_bound_is_read_and_answered(proxy, chunked):
    """3 MiB, about a Resend batch of 100 long emails: read in full, then refused for its fake key."""
    body = b"description=" + b"x" * (3 * MIB)
    content = iter([body[i:i + 65536] for i in range(0, len(body), 65536)]) if chunked else body
    answer = httpx.post(proxy.api_url + "/stripe/v1/payment_intents", content=content, timeout=30,
                        headers={"authorization": "Bearer sk_kb_" + "0" * 43,
                                 "content-type": "application/x-www-form-urlencoded"})
    assert answer.request.headers.get("transfer-encoding") == ("chunked" if chunked else None)
    assert answer.status_code == 401 and answer.json()["error"]["type"] == "invalid_request_error"


def test_the_proxy_raises_its_open_files_limit_to_the_hard_limit(home, fake_stripe, tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))  # the proxy inherits a low soft limit
    try:
        running = ProxyProcess(home=home, upstreams=(f"stripe={fake_stripe.url}",),
                               log_path=tmp_path / "proxy.log").start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        with open(f"/proc/{running.process.pid}/limits") as limits:
            line = next(line for line in limits if line.startswith("Max open files"))
        assert line.split()[3:5] == [str(hard), str(hard)], line
    finally:
        running.stop()
