"""The idle deadline of a kept-alive connection: from the moment an answer goes out, the client
has `--idle-timeout` seconds to begin its next request (then the head's own deadline runs).

Before it, mitmproxy's 10-minute idle timeout was the only bound on a connection that had made
one request, and bytes hidden in an incomplete TLS record started no clock at all.
"""

import socket
import ssl
import time

import httpx
import pytest

from keybrake_addon.fakes.fake_stripe import FakeStripe
from keybrake_addon.proxy_process import ProxyProcess

from .helpers import REAL_SECRET
from .raw_sockets import closed_within

IDLE_TIMEOUT_S = 1.5
SLOW_VENDOR_S = 2 * IDLE_TIMEOUT_S
KEYLESS_REQUEST = b"POST /v1/payment_intents HTTP/1.1\r\nHost: api.stripe.com\r\nContent-Length: 0\r\n\r\n"


@pytest.fixture
def fake_stripe():
    with FakeStripe(secret=REAL_SECRET, latency_s=SLOW_VENDOR_S) as fake:
        yield fake


@pytest.fixture
def proxy(home, fake_stripe, tmp_path):
    running = ProxyProcess(home=home, upstreams=(f"stripe={fake_stripe.url}",), log_path=tmp_path / "proxy.log",
                           extra_args=("--idle-timeout", str(IDLE_TIMEOUT_S), "--api-port", "0")).start()
    yield running
    running.stop()


def read_whole_answer(sock: socket.socket) -> bytes:
    """One answer, head and Content-Length body, however the reads split it."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_a_kept_alive_connection_is_closed_once_idle_past_the_timeout(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(b"GET http://api.stripe.com/v1/charges HTTP/1.1\r\nHost: api.stripe.com\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 ")  # refused without a key: an answer all the same
        waited = closed_within(sock, IDLE_TIMEOUT_S + 5)
    assert waited is not None, "an idle kept-alive connection outlived the idle timeout"
    assert waited >= IDLE_TIMEOUT_S - 0.3


def test_a_connection_reused_within_the_timeout_is_served_again(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        for _ in range(3):
            sock.sendall(b"GET http://api.stripe.com/v1/charges HTTP/1.1\r\nHost: api.stripe.com\r\n\r\n")
            assert read_whole_answer(sock).startswith(b"HTTP/1.1 ")
            time.sleep(IDLE_TIMEOUT_S / 2)


def test_a_vendor_call_slower_than_the_idle_timeout_is_answered(proxy, issue):
    # The idle clock starts with the answer, not with the request: waiting on a vendor is not idleness.
    vault_key = issue("--total-usd-cap", "5", "--allow", "POST /v1/payment_intents")["vault_key"]
    with httpx.Client(base_url=proxy.api_url + "/stripe", timeout=SLOW_VENDOR_S + 10) as client:
        started = time.monotonic()
        answer = client.post("/v1/payment_intents", data={"amount": "100", "currency": "usd"},
                             headers={"authorization": f"Bearer {vault_key}"})
        assert answer.status_code == 200, answer.text
        assert time.monotonic() - started >= SLOW_VENDOR_S


def handshake_by_hand(proxy, home) -> tuple[socket.socket, ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """A TLS session through CONNECT whose records the test writes to the socket itself."""
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.sendall(b"CONNECT api.stripe.com:443 HTTP/1.1\r\nHost: api.stripe.com:443\r\n\r\n")
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    context = ssl.create_default_context(cafile=str(home / "certs" / "keybrake-ca.pem"))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="api.stripe.com")
    sock.settimeout(10)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            if pending := outgoing.read():
                sock.sendall(pending)
            incoming.write(sock.recv(65536))
    if pending := outgoing.read():
        sock.sendall(pending)
    return sock, tls, incoming, outgoing


def read_answer(sock: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO) -> bytes:
    while True:
        try:
            return tls.read(65536)
        except ssl.SSLWantReadError:
            incoming.write(sock.recv(65536))


def test_an_incomplete_tls_record_after_a_request_is_closed_at_the_idle_timeout(proxy, home):
    # The next head's first record is cut after its 5-byte header and sent in the same write as the
    # request: the proxy reads it with the request, its TLS layer holds it unseen, and no later
    # byte comes to start a head's clock.
    sock, tls, incoming, outgoing = handshake_by_hand(proxy, home)
    with sock:
        tls.write(KEYLESS_REQUEST)
        request_record = outgoing.read()
        tls.write(b"POST /v1/payment_intents HTTP/1.1\r\n")
        next_record = outgoing.read()
        sock.sendall(request_record + next_record[:5])
        assert read_answer(sock, tls, incoming).startswith(b"HTTP/1.1 ")
        waited = closed_within(sock, IDLE_TIMEOUT_S + 5)
    assert waited is not None, "a connection holding an incomplete TLS record outlived the idle timeout"
