"""A refused CONNECT keeps its connection open for another request, and that request's head is
bounded like any other.

The meter used to stop counting at every CONNECT, refused or not: after an egress refusal (403), a
client could send a request head of any size, and mitmproxy buffered all of it.
"""

import socket
import time

import pytest

from keybrake_addon.proxy_process import ProxyProcess

MIB = 1024 * 1024
HEADER_TIMEOUT_S = 2.0


@pytest.fixture
def proxy(home, tmp_path):
    running = ProxyProcess(home=home, upstreams=(), log_path=tmp_path / "proxy.log",
                           extra_args=("--strict-egress", "--header-timeout", str(HEADER_TIMEOUT_S))).start()
    yield running
    running.stop()


def rss_mib(proxy) -> float:
    with open(f"/proc/{proxy.process.pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_an_endless_head_after_a_refused_connect_is_not_buffered(proxy):
    before = rss_mib(proxy)
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 403")
        sock.sendall(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n")
        sent = 0
        sock.settimeout(HEADER_TIMEOUT_S + 5)
        started = time.monotonic()
        try:
            while sent < 64 * MIB:
                sock.sendall(b"X-Filler: " + b"y" * 1000 + b"\r\n")
                sent += 1012
        except OSError:
            pass
    assert sent < 64 * MIB, "the proxy read a 64 MiB request head after refusing a CONNECT"
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 5
    assert rss_mib(proxy) - before < 4, f"RSS grew from {before:.0f} to {rss_mib(proxy):.0f} MiB"
