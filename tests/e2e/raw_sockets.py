"""Raw-socket helpers for the tests of what a client can make the proxy hold (bounds, deadlines)."""

import socket
import ssl
import time

MIB = 1024 * 1024
ENDLESS_LIMIT = 64 * MIB  # what an "endless" head stops at if the proxy never stops reading


def rss_mib(proxy) -> float:
    with open(f"/proc/{proxy.process.pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def closed_within(sock, seconds: float) -> float | None:
    """Seconds until the proxy closed the connection (EOF or reset), or None if it stayed open that long."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, ssl.SSLError):
        pass
    except TimeoutError:
        return None
    return time.monotonic() - started


def send_endless_head(sock: socket.socket, head_start: bytes, timeout_s: float) -> int:
    """`head_start`, then header lines until the proxy stops reading or ENDLESS_LIMIT is sent;
    returns the header bytes that went out."""
    sock.sendall(head_start)
    sent = 0
    sock.settimeout(timeout_s)
    try:
        while sent < ENDLESS_LIMIT:
            sock.sendall(b"X-Filler: " + b"y" * 1000 + b"\r\n")
            sent += 1012
    except OSError:
        pass
    return sent


def exchange_through_proxy(proxy, home, host: str, request: bytes) -> str:
    """Send `request` as written (no client library would write it) to `host` through the proxy's
    CONNECT and TLS, trusting the home's CA; returns the answer's head, lower-cased."""
    proxy_host, port = proxy.url.removeprefix("http://").split(":")
    with socket.create_connection((proxy_host, int(port)), timeout=10) as raw:
        raw.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
        assert b" 200 " in raw.recv(4096)
        context = ssl.create_default_context(cafile=str(home / "certs" / "keybrake-ca.pem"))
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(request)
            return tls.recv(65536).split(b"\r\n\r\n")[0].decode().lower()
