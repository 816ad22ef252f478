"""What a client sends after a CONNECT is bounded until Keybrake knows it is a blind tunnel.

The meter used to stop counting at every CONNECT. After an egress refusal (403, which keeps the
connection for another request), or inside an accepted tunnel that carried plain HTTP instead of
TLS, a client could send a request head of any size, and mitmproxy buffered all of it: 64 MiB in
a tenth of a second. A tunnel that never began its TLS handshake was held for mitmproxy's
10-minute idle timeout.
"""

import socket
import ssl
import time

import pytest

from keybrake_addon.proxy_process import ProxyProcess

from .raw_sockets import ENDLESS_LIMIT, closed_within, rss_mib, send_endless_head

HEADER_TIMEOUT_S = 2.0
PLAIN_HEAD_START = b"GET http://api.stripe.com/v1/charges HTTP/1.1\r\nHost: api.stripe.com\r\n"


def start_proxy(home, tmp_path, *extra: str) -> ProxyProcess:
    return ProxyProcess(home=home, upstreams=(), log_path=tmp_path / "proxy.log",
                        extra_args=("--header-timeout", str(HEADER_TIMEOUT_S), *extra)).start()


@pytest.fixture
def proxy(home, tmp_path):
    running = start_proxy(home, tmp_path)  # on loopback: egress open, so loopback hosts are tunnelled
    yield running
    running.stop()


def connect(proxy, target: bytes, expect: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target))
    answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 " + expect), answer[:200]
    return sock


@pytest.mark.parametrize(("egress", "target", "answer"), [
    (("--strict-egress",), b"example.com:443", b"403"),  # refused: the connection stays open
    ((), b"api.stripe.com:443", b"200"),  # accepted: plain HTTP instead of a TLS handshake
], ids=["after a refused CONNECT", "inside an accepted tunnel"])
def test_an_endless_head_after_a_connect_is_not_buffered(home, tmp_path, egress, target, answer):
    running = start_proxy(home, tmp_path, *egress)
    try:
        before = rss_mib(running)
        with connect(running, target, answer) as sock:
            sent = send_endless_head(sock, PLAIN_HEAD_START, HEADER_TIMEOUT_S + 5)
        assert sent < ENDLESS_LIMIT, "the proxy read a 64 MiB request head after a CONNECT"
        assert rss_mib(running) - before < 4, f"RSS grew from {before:.0f} to {rss_mib(running):.0f} MiB"
    finally:
        running.stop()


def test_a_tunnel_that_never_begins_its_tls_handshake_is_closed_at_the_deadline(proxy):
    with connect(proxy, b"api.stripe.com:443", b"200") as sock:
        waited = closed_within(sock, HEADER_TIMEOUT_S + 5)
    assert waited is not None, "a silent tunnel outlived the head's deadline"
    assert waited >= HEADER_TIMEOUT_S - 0.5


def test_a_blind_tunnel_to_another_host_may_stay_quiet_past_the_deadline(proxy, tls_echo_server):
    url, cert_path = tls_echo_server
    address = url.removeprefix("https://").encode()
    sock = connect(proxy, address, b"200")
    context = ssl.create_default_context(cafile=str(cert_path))  # the server's own: not intercepted
    with context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        time.sleep(HEADER_TIMEOUT_S + 1)
        tls.sendall(b"GET /quiet HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        status_line = tls.recv(65536).split(b"\r\n", 1)[0]
        assert status_line.split()[1:2] == [b"200"], status_line
