"""Server plumbing shared by the fake vendor APIs (stdlib only).

A `FakeServer` subclass supplies only its vendor's request-id format, error shape, auth, routes
and state; this module owns the rest: a threaded HTTP/1.1 server with keep-alive (every reply
carries Content-Length), start/stop and the context manager, the lock, the `received` record,
`hits`, a per-response request-id header, optional latency and dropped connections, and a
command-line `run_main`.

Every request's whole effect (recording it, then `_dispatch`) runs under the one lock, so
concurrent duplicates cannot race; latency and socket I/O stay outside it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self
from urllib.parse import parse_qsl, urlsplit

Obj = dict[str, Any]
Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the fake saw it (recorded before auth), so tests can see what was forwarded."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names; the last duplicate wins
    form: dict[str, str]  # the query string for GET; else the form body where the vendor takes forms
    authorization: str
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: Headers = ()
    drop: bool = False  # vanish without a response byte (an injected fault)


def json_reply(status: int, payload: Any, headers: Headers = ()) -> Reply:
    return Reply(status, json.dumps(payload).encode(), headers)


class VendorError(Exception):
    """A vendor-shaped error reply: raised by endpoint code, rendered by `FakeServer._respond`."""

    def __init__(self, status: int, body: Obj, headers: Headers = (), message: str = "") -> None:
        super().__init__(message or str(body.get("message", status)))
        self.status, self.body, self.headers = status, body, headers

    def reply(self) -> Reply:
        return json_reply(self.status, self.body, self.headers)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 256  # the default backlog of 5 refuses connections under benchmark load

    def __init__(self, addr: tuple[str, int], fake: FakeServer) -> None:
        self.fake = fake
        super().__init__(addr, _Handler)


class _Handler(BaseHTTPRequestHandler):
    """Thin HTTP layer: parse, hand to FakeServer._respond, then write (or drop) the reply."""

    protocol_version = "HTTP/1.1"  # keep-alive; every reply carries Content-Length
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms ACK stalls
    timeout = 120  # idle keep-alive connections eventually give their thread back
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silenced: a stderr line per request would dominate benchmark time."""

    def _handle(self) -> None:
        fake, method = self.server.fake, self.command
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.send_error(411, "chunked bodies are not supported; send Content-Length")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.send_error(400, "bad Content-Length")
            return
        body = self.rfile.read(length) if length > 0 else b""
        if len(body) < length:  # the client died mid-request: a real server never acts on half a body
            self.close_connection = True
            return
        split = urlsplit(self.path)
        form_source = body.decode("utf-8", "replace") if method != "GET" and fake.form_bodies else split.query
        headers = {k.lower(): v for k, v in self.headers.items()}
        req = ReceivedRequest(method, split.path, split.query, headers,
                              dict(parse_qsl(form_source, keep_blank_values=True)),  # unescapes a%5Bb%5D
                              headers.get("authorization", ""), body)
        reply = fake._respond(req)
        if fake.latency_s > 0:
            time.sleep(fake.latency_s)
        if reply.drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)

    do_GET = do_POST = do_DELETE = _handle


class FakeServer:
    """Base of the in-process fakes: lifecycle, recording and routing. Subclasses set the ClassVars,
    call `_set_routes`, and implement `_new_request_id`, `_unknown_route` and `_dispatch`."""

    vendor: ClassVar[str]  # "Stripe": for the thread name and `run_main`
    request_id_header: ClassVar[str]
    form_bodies: ClassVar[bool] = True  # parse non-GET bodies as urlencoded forms into `form`

    def __init__(self, host: str, port: int, latency_s: float) -> None:
        self.host, self.port = host, port
        self.latency_s = latency_s  # applies to every reply, replays included: it models the network
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._received: list[ReceivedRequest] = []
        self._hits = 0
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., Any]]] = []

    # ----- vendor hooks ----------------------------------------------------------------------

    def _new_request_id(self) -> str:
        raise NotImplementedError

    def _unknown_route(self, method: str, path: str) -> VendorError:
        raise NotImplementedError

    def _dispatch(self, req: ReceivedRequest, request_id: str) -> Reply:
        """One request's whole effect, called with the lock held; may raise VendorError."""
        raise NotImplementedError

    # ----- lifecycle -------------------------------------------------------------------------

    def start(self) -> str:
        """Bind (port 0 picks a free port), serve on a daemon thread, return the base URL."""
        if self._server is None:
            self._server = _Server((self.host, self.port), self)
            self.port = self._server.server_address[1]
            self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                            kwargs={"poll_interval": 0.05}, name=f"fake-{self.vendor.lower()}")
            self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving and cut idle keep-alive connections so clients cannot keep using them."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://{self.host}:{self.port}"

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    # ----- observations for tests (copies, taken under the lock) -----------------------------

    def _locked[T](self, read: Callable[[], T]) -> T:
        """Run `read` under the lock, so an observation is one consistent copy."""
        with self._lock:
            return read()

    @property
    def received(self) -> list[ReceivedRequest]:
        return self._locked(lambda: list(self._received))

    @property
    def hits(self) -> int:
        return self._locked(lambda: self._hits)

    def clear_received(self) -> None:
        with self._lock:
            self._received.clear()

    # ----- request pipeline ------------------------------------------------------------------

    def _respond(self, req: ReceivedRequest) -> Reply:
        rid = self._new_request_id()
        with self._lock:
            self._hits += 1
            self._received.append(req)
            try:
                reply = self._dispatch(req, rid)
            except VendorError as exc:
                reply = exc.reply()
        return reply if reply.drop else replace(reply, headers=((self.request_id_header, rid), *reply.headers))

    def _set_routes(self, table: list[tuple[str, str, Callable[..., Any]]]) -> None:
        self._routes = [(m, re.compile(p), fn) for m, p, fn in table]

    def _route(self, method: str, path: str, arg: Any) -> Any:
        """Call the handler whose method and pattern match, as fn(arg, *path groups)."""
        for route_method, pattern, fn in self._routes:
            if route_method == method and (m := pattern.fullmatch(path)):
                return fn(arg, *m.groups())
        raise self._unknown_route(method, path)


def run_main(fake_cls: type[FakeServer], default_port: int, argv: list[str] | None,
             *options: tuple[str, Obj]) -> int:
    """Serve one fake in the foreground until SIGINT/SIGTERM. Each option is (flag, add_argument
    kwargs) and its dest must be a constructor keyword; --host, --port and --latency come free."""
    vendor = fake_cls.vendor
    ap = argparse.ArgumentParser(description=f"Local fake {vendor} API server.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=default_port)
    ap.add_argument("--latency", dest="latency_s", metavar="SECONDS", type=float, default=0.0,
                    help="seconds to sleep before each reply")
    for flag, kwargs in options:
        ap.add_argument(flag, **kwargs)
    fake = fake_cls(**vars(ap.parse_args(argv)))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"fake {vendor.lower()} listening on {fake.start()}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        fake.stop()
    return 0
