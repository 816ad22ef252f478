"""Rolling restarts: health checks, and a SIGTERM that lets calls in flight finish and settle.

The real proxy process, the official stripe SDK, and a FakeStripe that holds its answer for a
while after charging, so a call is in flight when the signal arrives.
"""

import http.client
import signal
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from email.message import Message

import pytest
import stripe

from keybrake_addon.fakes.fake_stripe import FakeStripe
from keybrake_addon.proxy_process import ProxyProcess

from .helpers import REAL_SECRET, keybrake_json

PI = {"amount": 5000, "currency": "usd", "confirm": True, "payment_method": "pm_card_visa"}


@pytest.fixture
def start_proxy(home, tmp_path, monkeypatch):
    """Starts the proxy against a fake Stripe with the given latency; stops both at the end."""
    started = []

    def start(*extra_args: str, latency_s: float = 0.0) -> tuple[ProxyProcess, FakeStripe]:
        fake = FakeStripe(secret=REAL_SECRET, latency_s=latency_s).__enter__()
        proxy = ProxyProcess(home=home, upstreams=(f"stripe={fake.url}",), log_path=tmp_path / "proxy.log",
                             extra_args=extra_args)
        started.append((proxy, fake))
        proxy.start()
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setattr(stripe, "ca_bundle_path", str(home / "certs" / "keybrake-ca-bundle.pem"))
        return proxy, fake

    yield start
    for proxy, fake in started:
        proxy.stop()
        fake.__exit__(None, None, None)


class CallInThread:
    """One PaymentIntent create through the proxy on a thread: its result or its error."""

    def __init__(self, vault_key: str) -> None:
        self.result = self.error = None
        self.thread = threading.Thread(target=self._run, args=(vault_key,), daemon=True)
        self.thread.start()

    def _run(self, vault_key: str) -> None:
        try:
            self.result = stripe.StripeClient(vault_key, max_network_retries=0).v1.payment_intents.create(
                params=PI, options={"idempotency_key": "slow-order"})
        except Exception as error:  # noqa: BLE001 - the test asserts on it
            self.error = error

    def join(self, timeout_s: float) -> None:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the call did not come back"


def wait_until_charged(fake: FakeStripe, timeout_s: float = 10.0) -> None:
    """The fake has charged and now sits on its answer: the call is in flight through the proxy."""
    deadline = time.monotonic() + timeout_s
    while not fake.objects_created:
        assert time.monotonic() < deadline, "the call never reached the fake"
        time.sleep(0.02)


def get(url: str) -> tuple[int, Message, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.headers, answer.read().decode()
    except urllib.error.HTTPError as answer:
        return answer.code, answer.headers, answer.read().decode()


def refuses_connections(port: int, within_s: float = 2.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        time.sleep(0.05)
    return False


def test_sigterm_lets_a_slow_call_finish_and_settle(start_proxy, issue, home):
    proxy, fake = start_proxy("--health-port", "0", "--drain-timeout", "10", latency_s=2.0)
    key = issue("--total-usd-cap", "120", "--allow", "POST /v1/payment_intents")
    assert get(proxy.health_url + "/readyz")[0] == 200

    call = CallInThread(key["vault_key"])
    wait_until_charged(fake)
    signalled = time.monotonic()
    proxy.process.send_signal(signal.SIGTERM)

    assert refuses_connections(proxy.port), "the forward listener still accepts connections while draining"
    status, headers, body = get(proxy.health_url + "/readyz")
    assert (status, body, headers.get("Retry-After")) == (503, '{"status":"unavailable"}', "2")
    assert call.thread.is_alive(), "the slow call should still be in flight while draining"

    call.join(timeout_s=10)
    assert call.error is None, f"the call in flight was cut off: {call.error!r}"
    assert call.result.status == "succeeded"
    assert proxy.process.wait(timeout=10) == 0
    assert time.monotonic() - signalled < 10
    assert "drained 1 call in flight" in proxy.log_text()
    assert "0 left" in proxy.log_text()

    shown = keybrake_json(home, "keys", "show", key["key_id"])
    assert (shown["spent_usd"], shown["reserved_usd"], shown["open_reservations"]) == ("50.00", "0.00", [])
    assert fake.money_moved_minor == 5000


def test_while_draining_a_connection_opened_before_gets_503s_and_nothing_is_forwarded(start_proxy, issue, home):
    proxy, fake = start_proxy("--api-port", "0", "--drain-timeout", "10", latency_s=3.0)
    key = issue("--total-usd-cap", "120", "--allow", "POST /v1/payment_intents")
    api = http.client.HTTPConnection(proxy.api_url.removeprefix("http://"), timeout=5)
    api.request("GET", "/readyz")
    assert api.getresponse().read() == b'{"status":"ready"}'  # a kept-alive connection, opened before the drain

    call = CallInThread(key["vault_key"])
    wait_until_charged(fake)
    proxy.process.send_signal(signal.SIGTERM)
    assert refuses_connections(int(proxy.api_url.rsplit(":", 1)[1])), "the API listener still accepts connections"

    api.request("GET", "/readyz")
    answer = api.getresponse()
    assert (answer.status, answer.read(), answer.getheader("retry-after")) == (503, b'{"status":"unavailable"}', "2")
    api.request("POST", "/stripe/v1/payment_intents", body="amount=5000&currency=usd",
                headers={"authorization": f"Bearer {key['vault_key']}",
                         "content-type": "application/x-www-form-urlencoded"})
    answer = api.getresponse()
    assert (answer.status, answer.getheader("x-keybrake-refusal")) == (503, "keybrake_unavailable")
    assert b"shutting down" in answer.read()
    api.close()

    call.join(timeout_s=10)
    assert call.error is None and proxy.process.wait(timeout=10) == 0
    assert fake.objects_created == [call.result.id]  # the refused call was not forwarded
    shown = keybrake_json(home, "keys", "show", key["key_id"])
    assert (shown["spent_usd"], shown["reserved_usd"]) == ("50.00", "0.00")


def test_a_call_slower_than_the_drain_timeout_is_left_and_stays_counted(start_proxy, issue, home):
    proxy, fake = start_proxy("--drain-timeout", "1", latency_s=8.0)
    key = issue("--total-usd-cap", "120", "--allow", "POST /v1/payment_intents")

    call = CallInThread(key["vault_key"])
    wait_until_charged(fake)
    signalled = time.monotonic()
    proxy.process.send_signal(signal.SIGTERM)
    assert proxy.process.wait(timeout=6) == 0
    assert time.monotonic() - signalled < 6  # the drain timeout, not the call's 8 s
    assert "left 1 call in flight: its hold stays counted and shows as unknown" in proxy.log_text()

    call.join(timeout_s=10)
    assert isinstance(call.error, (stripe.APIConnectionError, stripe.APIError))
    shown = keybrake_json(home, "keys", "show", key["key_id"])
    assert (shown["spent_usd"], shown["reserved_usd"], shown["unknown_usd"]) == ("0.00", "50.00", "50.00")
    assert [r["state"] for r in shown["open_reservations"]] == ["unknown"]


def test_health_checks_on_the_api_port_and_the_health_port_need_no_token(start_proxy):
    proxy, _ = start_proxy("--api-port", "0", "--health-port", "0")
    for base in (proxy.api_url, proxy.health_url):
        assert get(base + "/healthz")[::2] == (200, '{"status":"ok"}')
        status, headers, body = get(base + "/readyz")
        assert (status, body, headers["Content-Type"]) == (200, '{"status":"ready"}', "application/json")
    assert get(proxy.health_url + "/vault/keys")[::2] == (404, '{"status":"not found"}')


def test_the_health_port_bounds_what_it_reads(start_proxy):
    proxy, _ = start_proxy("--health-port", "0")
    port = int(proxy.health_url.rsplit(":", 1)[1])

    with socket.create_connection(("127.0.0.1", port), timeout=5) as oversized:
        oversized.sendall(b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * 8192)
        assert _read_all(oversized) == b""  # closed unanswered, without waiting for the head's end

    with socket.create_connection(("127.0.0.1", port), timeout=5) as silent:
        started = time.monotonic()
        assert _read_all(silent) == b""
        assert 1.5 < time.monotonic() - started < 4  # the 2 s deadline

    assert get(proxy.health_url + "/healthz")[0] == 200  # and it still answers


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def test_readyz_is_503_while_the_ledger_cannot_be_opened_then_200(home, start_proxy):
    blocker = sqlite3.connect(home / "keybrake.db", isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the lock as the proxy starts
        proxy, _ = start_proxy("--api-port", "0", "--health-port", "0", "--db-busy-timeout", "0.2")
        assert "cannot open the ledger yet" in proxy.log_text()
        for base in (proxy.api_url, proxy.health_url):
            status, headers, body = get(base + "/readyz")
            assert (status, body, headers.get("Retry-After")) == (503, '{"status":"unavailable"}', "2")
            assert get(base + "/healthz")[0] == 200  # up, though not ready
        blocker.execute("ROLLBACK")  # the trouble ends: readiness follows without a restart
        deadline = time.monotonic() + 10
        while get(proxy.health_url + "/readyz")[0] != 200:
            assert time.monotonic() < deadline, "readyz stayed 503 after the ledger could be opened"
            time.sleep(0.2)
    finally:
        blocker.close()
