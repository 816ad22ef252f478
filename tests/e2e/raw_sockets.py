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
