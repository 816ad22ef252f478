"""The request head's deadline on the forward listener: a silent connection, a silent TLS session
after CONNECT, and a kept-alive connection between requests (whose clock starts with its first byte).

The deadline is a timer per connection that fails the pending read; these are the paths where a
read is already waiting when the clock starts.
"""

import socket
import ssl

import pytest

from keybrake_addon.proxy_process import ProxyProcess

from .raw_sockets import closed_within

HEADER_TIMEOUT_S = 1.5


@pytest.fixture
def proxy(home, fake_stripe, tmp_path):
    running = ProxyProcess(home=home, upstreams=(f"stripe={fake_stripe.url}",), log_path=tmp_path / "proxy.log",
                           extra_args=("--header-timeout", str(HEADER_TIMEOUT_S))).start()
    yield running
    running.stop()


def tls_through(proxy, home) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.sendall(b"CONNECT api.stripe.com:443 HTTP/1.1\r\nHost: api.stripe.com:443\r\n\r\n")
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    context = ssl.create_default_context(cafile=str(home / "certs" / "keybrake-ca.pem"))
    return context.wrap_socket(sock, server_hostname="api.stripe.com")


def test_a_connection_that_sends_nothing_is_closed_at_the_deadline(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        waited = closed_within(sock, HEADER_TIMEOUT_S + 5)
    assert waited is not None, "a silent connection outlived the head's deadline"
    assert waited >= HEADER_TIMEOUT_S - 0.3


def test_a_silent_tls_session_after_connect_is_closed_at_the_deadline(proxy, home):
    with tls_through(proxy, home) as tls:
        waited = closed_within(tls, HEADER_TIMEOUT_S + 5)
    assert waited is not None, "a TLS session that never sent a head outlived the deadline"


def test_a_kept_alive_connection_may_idle_between_requests_past_the_deadline(proxy, home):
    request = (b"POST /v1/payment_intents HTTP/1.1\r\nHost: api.stripe.com\r\nContent-Length: 0\r\n\r\n")
    with tls_through(proxy, home) as tls:
        tls.sendall(request)
        assert tls.recv(65536).startswith(b"HTTP/1.1 ")  # refused without a key: an answer all the same
        assert closed_within(tls, HEADER_TIMEOUT_S * 2) is None  # no byte yet: no clock
        tls.sendall(request)
        assert tls.recv(65536).startswith(b"HTTP/1.1 ")


def test_a_head_begun_on_a_kept_alive_connection_must_end_by_the_deadline(proxy, home):
    with tls_through(proxy, home) as tls:
        tls.sendall(b"POST /v1/payment_intents HTTP/1.1\r\nHost: api.stripe.com\r\nContent-Length: 0\r\n\r\n")
        assert tls.recv(65536).startswith(b"HTTP/1.1 ")
        tls.sendall(b"POST /v1/payment_intents HTTP/1.1\r\n")  # and no more
        waited = closed_within(tls, HEADER_TIMEOUT_S + 5)
    assert waited is not None, "a half-sent head on a kept-alive connection outlived the deadline"


def test_a_head_begun_in_the_same_write_as_the_request_before_must_end_by_the_deadline(proxy, home):
    # The half head arrives in the read that ends the first request, before the proxy awaits a new
    # head: no later byte will start its clock, so the clock must start from what is already held.
    with tls_through(proxy, home) as tls:
        tls.sendall(b"POST /v1/payment_intents HTTP/1.1\r\nHost: api.stripe.com\r\nContent-Length: 0\r\n\r\n"
                    b"POST /v1/payment_intents HTTP/1.1\r\n")  # and no more
        assert tls.recv(65536).startswith(b"HTTP/1.1 ")
        waited = closed_within(tls, HEADER_TIMEOUT_S + 5)
    assert waited is not None, "a half head sent with the request before it outlived the deadline"


def test_a_plain_connection_with_a_head_begun_in_the_same_write_must_end_it_by_the_deadline(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(b"GET http://api.stripe.com/v1/charges HTTP/1.1\r\nHost: api.stripe.com\r\n\r\n"
                     b"GET http://api.stripe.com/v1/charges HTTP/1.1\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 ")
        waited = closed_within(sock, HEADER_TIMEOUT_S + 5)
    assert waited is not None, "a half head sent with the request before it outlived the deadline"
