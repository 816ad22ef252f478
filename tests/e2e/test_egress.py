"""The egress policy with the real proxy: hosts Keybrake does not front, by CONNECT and by plain HTTP.

The destination is a plain-HTTP echo server on loopback, reached by the name `localhost` (which
resolves to a loopback address: the private-address rule must catch it) or by a raw IP literal.
"""

import json
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from keybrake_addon.proxy_process import ProxyProcess

ALLOW_LOOPBACK = ("--egress-allow-private", "127.0.0.0/8")


@pytest.fixture
def echo():
    """A plain-HTTP server on 127.0.0.1 answering with the Host header it saw; counts its requests."""
    seen: list[str] = []

    class Echo(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("host", ""))
            body = json.dumps({"host": self.headers.get("host", "")}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    server.seen = seen
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def start_proxy(home, fake_stripe, tmp_path):
    started = []

    def start(*args: str) -> ProxyProcess:
        proxy = ProxyProcess(home=home, upstreams=(f"stripe={fake_stripe.url}",),
                             log_path=tmp_path / f"proxy{len(started)}.log",
                             extra_args=("--listen-host", "127.0.0.1", *args)).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def tunnel_get(proxy: ProxyProcess, target: str) -> tuple[int, str]:
    """CONNECT target, then, if the tunnel opened, a GET through it: (CONNECT status, what came back).

    A refused CONNECT's answer has no body (Node's proxy agents would hang on one): its head is
    what came back."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as conn:
        conn.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head, body = read_answer(conn)
        status = int(head.split()[1])
        if status != 200:
            assert body == "", "a refused CONNECT answers without a body"
            return status, head
        conn.sendall(f"GET / HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode())
        _, body = read_answer(conn, until_close=True)
        return status, body


def read_answer(conn: socket.socket, until_close: bool = False) -> tuple[str, str]:
    """One answer's head and body: the body by its Content-Length, or to the end of the stream."""
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
        head, found, rest = data.partition(b"\r\n\r\n")
        if found and not until_close and len(rest) >= content_length(head):
            break
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body.decode("latin-1")


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def plain_get(proxy: ProxyProcess, url: str) -> httpx.Response:
    """A plain-HTTP proxy request: an absolute URI, no CONNECT."""
    with httpx.Client(proxy=proxy.url, timeout=10) as client:
        return client.get(url)


def test_allowlisted_name_resolving_to_loopback_is_refused(start_proxy, echo):
    proxy = start_proxy("--egress", "allowlist", "--egress-allow", "localhost")
    status, body = tunnel_get(proxy, f"localhost:{echo.server_port}")
    assert status == 403
    assert "allowlist" in body and "loopback" in body
    assert "127.0.0.1" not in body and "::1" not in body  # the answer does not show where the name points
    answer = plain_get(proxy, f"http://localhost:{echo.server_port}/")
    assert answer.status_code == 403 and "loopback" in answer.text
    assert answer.headers["x-keybrake-refusal"] == "keybrake_egress_denied"
    assert echo.seen == []
    assert proxy.log_text().count("egress refused") == 2


def test_allow_private_lets_an_allowlisted_name_reach_loopback(start_proxy, echo):
    proxy = start_proxy("--egress", "allowlist", "--egress-allow", "localhost", *ALLOW_LOOPBACK)
    status, body = tunnel_get(proxy, f"localhost:{echo.server_port}")
    assert status == 200 and json.loads(body) == {"host": f"localhost:{echo.server_port}"}
    answer = plain_get(proxy, f"http://localhost:{echo.server_port}/")
    assert answer.status_code == 200
    # Pinned to the checked address, the request still names the host it was meant for.
    assert answer.json() == {"host": f"localhost:{echo.server_port}"}
    assert len(echo.seen) == 2


def test_an_unlisted_host_and_a_raw_ip_literal_are_refused(start_proxy, echo):
    proxy = start_proxy("--egress", "allowlist", "--egress-allow", "localhost", *ALLOW_LOOPBACK)
    status, body = tunnel_get(proxy, f"127.0.0.1:{echo.server_port}")  # the address localhost stands for
    assert status == 403 and "not on --egress-allow" in body
    status, _ = tunnel_get(proxy, f"unlisted.invalid:{echo.server_port}")
    assert status == 403
    answer = plain_get(proxy, f"http://127.0.0.1:{echo.server_port}/")
    assert answer.status_code == 403 and "not on --egress-allow" in answer.text
    assert echo.seen == []


def test_a_port_pattern_admits_only_that_port(start_proxy, echo):
    proxy = start_proxy("--egress", "allowlist", "--egress-allow", f"localhost:{echo.server_port + 1}",
                        *ALLOW_LOOPBACK)
    status, body = tunnel_get(proxy, f"localhost:{echo.server_port}")
    assert status == 403 and "not on --egress-allow" in body
    assert echo.seen == []


def test_open_passes_everything(start_proxy, echo):
    proxy = start_proxy("--egress", "open")
    assert tunnel_get(proxy, f"localhost:{echo.server_port}")[0] == 200
    assert tunnel_get(proxy, f"127.0.0.1:{echo.server_port}")[0] == 200
    assert plain_get(proxy, f"http://127.0.0.1:{echo.server_port}/").status_code == 200
    assert len(echo.seen) == 3


@pytest.mark.parametrize("flag", [("--egress", "deny"), ("--strict-egress",)])
def test_deny_refuses_every_host_keybrake_does_not_front(start_proxy, echo, flag):
    proxy = start_proxy(*flag)
    status, body = tunnel_get(proxy, f"localhost:{echo.server_port}")
    assert status == 403 and "'deny'" in body
    assert tunnel_get(proxy, f"127.0.0.1:{echo.server_port}")[0] == 403
    assert plain_get(proxy, f"http://127.0.0.1:{echo.server_port}/").status_code == 403
    assert echo.seen == []


@pytest.mark.parametrize("mode", ["deny", "allowlist", "open"])
def test_vendor_hosts_reach_the_gate_in_every_mode(start_proxy, home, fake_stripe, mode):
    proxy = start_proxy("--egress", mode)
    context = ssl.create_default_context(cafile=str(home / "certs" / "keybrake-ca.pem"))
    with httpx.Client(proxy=proxy.url, verify=context, timeout=10) as client:
        over_tls = client.get("https://api.stripe.com/v1/balance")  # no vault key: the gate refuses
        plain = client.get("http://api.stripe.com/v1/balance")
    for answer in (over_tls, plain):
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "keybrake_missing_key"
    assert fake_stripe.hits == 0
    assert "egress refused" not in proxy.log_text()


def test_a_contradictory_egress_command_line_is_refused(home, tmp_path, fake_stripe):
    with pytest.raises(AssertionError, match="--strict-egress means --egress deny"):
        ProxyProcess(home=home, upstreams=(), log_path=tmp_path / "p.log",
                     extra_args=("--strict-egress", "--egress", "open")).start(timeout_s=10)
    with pytest.raises(AssertionError, match="apply to --egress allowlist"):
        ProxyProcess(home=home, upstreams=(), log_path=tmp_path / "q.log",
                     extra_args=("--egress", "open", "--egress-allow", "x.example.com")).start(timeout_s=10)
    with pytest.raises(AssertionError, match="egress policy"):
        ProxyProcess(home=home, upstreams=(), log_path=tmp_path / "r.log",
                     extra_args=("--egress-allow", "*.com")).start(timeout_s=10)
