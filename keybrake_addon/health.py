"""Health checks for load balancers and rolling deploys: GET /healthz and GET /readyz.

/healthz: the process is up. /readyz: it can take vendor calls now (the ledger answers, the CA
is loaded, no drain under way). Neither takes a token, so neither says more than a fixed word:
no version, no path, no error text (a prober on the network learns nothing else).

The API listener answers them itself (listener/app.py); `--health-port` serves them from
HealthServer below, for deployments that run only the forward proxy. `--metrics-port` reuses its
one-request server for /metrics.
"""

import asyncio
import json
from collections.abc import Awaitable, Callable

from .vendors.base import RenderedResponse

HEALTH_PATHS = ("/healthz", "/readyz")
NOT_READY_RETRY_AFTER_S = 2
HEAD_LIMIT_BYTES = 4096  # a health check's request head is a line or two
DEADLINE_S = 2.0  # to read the head, and again to write the answer
MAX_CONNECTIONS = 32  # beyond this many at once, a connection is closed unanswered

Readiness = Callable[[], Awaitable[bool]]
Answer = Callable[[str, str], Awaitable[RenderedResponse]]  # (method, path) -> the answer


def is_health_path(path: str) -> bool:
    return path.partition("?")[0] in HEALTH_PATHS


async def health_answer(method: str, path: str, ready: Readiness) -> RenderedResponse:
    route = path.partition("?")[0]
    if route not in HEALTH_PATHS:
        return _answer(404, "not found")
    if method not in ("GET", "HEAD"):
        return _answer(405, "method not allowed", {"allow": "GET, HEAD"})
    if route == "/healthz":
        return _answer(200, "ok")
    if await ready():
        return _answer(200, "ready")
    return _answer(503, "unavailable", {"retry-after": str(NOT_READY_RETRY_AFTER_S)})


def _answer(status: int, word: str, headers: dict[str, str] | None = None) -> RenderedResponse:
    fixed = {"content-type": "application/json", "cache-control": "no-store"}
    return RenderedResponse(status, {**fixed, **(headers or {})},
                            json.dumps({"status": word}, separators=(",", ":")).encode())


class OneRequestServer:
    """A minimal HTTP/1.1 listener: one request per connection, its head bounded in size and time,
    its body never read (GET and HEAD are all it serves)."""

    def __init__(self, answer: Answer) -> None:
        self._answer = answer
        self._server: asyncio.Server | None = None
        self._open = 0

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (port 0 picks a free one)."""
        self._server = await asyncio.start_server(self._serve, host, port, limit=HEAD_LIMIT_BYTES)
        return self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open += 1
        try:
            if self._open <= MAX_CONNECTIONS:
                await self._answer_one(reader, writer)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a slow, oversized or vanished client gets no answer
        finally:
            self._open -= 1
            writer.close()

    async def _answer_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(DEADLINE_S):
            head = await reader.readuntil(b"\r\n\r\n")
        request_line = _request_line(head)
        if request_line is None:
            answer = _answer(400, "bad request")
            method = "GET"
        else:
            method, path = request_line
            answer = await self._answer(method, path)
        writer.write(_serialize(answer, with_body=method != "HEAD"))
        async with asyncio.timeout(DEADLINE_S):
            await writer.drain()


class HealthServer(OneRequestServer):
    """/healthz and /readyz. It keeps answering while the proxy drains (readyz then says 503), so a
    load balancer sees the drain instead of a refused connection it might retry elsewhere on the
    same host."""

    def __init__(self, ready: Readiness) -> None:
        super().__init__(lambda method, path: health_answer(method, path, ready))


def _request_line(head: bytes) -> tuple[str, str] | None:
    parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        return None
    return parts[0], parts[1]


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 503: "Service Unavailable"}


def _serialize(answer: RenderedResponse, *, with_body: bool) -> bytes:
    headers = {**answer.headers, "content-length": str(len(answer.body)), "connection": "close"}
    head = f"HTTP/1.1 {answer.status} {_REASONS[answer.status]}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    return head.encode("latin-1") + (answer.body if with_body else b"")
