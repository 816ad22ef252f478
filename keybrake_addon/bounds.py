"""Bounds on what a stranger can make the proxy hold before anything is authenticated.

mitmproxy 12 bounds none of this itself: it buffers request headers without limit (see the
"FIXME: protect against header size DoS" in mitmproxy/proxy/layers/http/_http1.py), reads a chunked
body to its end before the `request` hook, and its only deadline is an idle timeout that any byte
resets. So this addon meters every client connection at the socket:

- while a request's head is awaited, at most `keybrake_max_header_bytes` are read from the
  client, and the head must be complete within `keybrake_header_timeout` (slowloris);
- once an answer is out, a kept-alive connection may wait `keybrake_idle_timeout` for its next
  request's first byte. That also bounds bytes the TLS layer holds unseen (an incomplete record of
  the next head);
- once the head is in, at most the body bound of its route: the declared Content-Length, or for a
  body of unknown length (chunked) the route's limit. A body declared over the limit is refused at
  once (the connection is closed, nothing is read);
- a client address may hold `keybrake_max_conns_per_address` connections, everyone together
  `keybrake_max_conns`; one more is closed as soon as it is accepted.

When a budget is spent the meter stops reading (the bytes stay in the kernel) and waits for the
phase to end; if it does not end within the deadline, the connection is closed. Clients speak
HTTP/1.1 only, so one connection carries one request at a time and a per-connection meter is exact.
"""

import asyncio
import logging
import resource
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from mitmproxy import connection, ctx, exceptions, http
from mitmproxy.proxy import mode_specs
from mitmproxy.proxy.layers import TCPLayer
from mitmproxy.proxy.layers.http import Http1Server, HttpLayer
from mitmproxy.utils import human

from .addon import UNREADABLE_BODY_BYTES, listener_vendor_route
from .api.vault_api import MAX_BODY_BYTES
from .text import loggable
from .bound_defaults import (DEFAULT_HEADER_TIMEOUT_S, DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MAX_CONNS,
                             DEFAULT_MAX_CONNS_PER_ADDRESS, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_VENDOR_BODY)

logger = logging.getLogger("keybrake")

WIRE_SLACK_BYTES = 16 * 1024


def on_the_wire(body_bytes: int) -> int:
    """Bytes read from the socket for a body: TLS records add up to 29 bytes per 16 KiB, chunked framing
    a few bytes per chunk, and a read may run a little into the next request."""
    return body_bytes + body_bytes // 256 + WIRE_SLACK_BYTES


HEAD_LATE = "request head not complete in time"
IDLE_TOO_LONG = "idle past the keep-alive timeout"


class Phase(Enum):
    HEAD = "head"  # awaiting a request's head: bounded in bytes and time
    BODY = "body"  # reading a body: bounded in bytes
    OPEN = "open"  # a blind tunnel: not metered


@dataclass
class Meter:
    """What one client connection may still send in its current phase."""

    header_bytes: int
    header_timeout_s: float
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    phase: Phase = Phase.HEAD
    budget: int = 0
    deadline: float | None = None
    budget_is_a_limit: bool = False  # spent means over the bound, not "all of a declared body is in"
    head_begun: bool = False  # the deadline is the head's, not the idle one of a kept-alive connection
    generation: int = 0
    # Resolved when the phase changes: what a read held back by a spent budget waits for.
    _changed: asyncio.Future | None = field(default=None, repr=False)
    # The head's deadline as a loop timer (one per connection, not a task per read), and what it
    # calls when the deadline passes: the reader fails its pending and next reads.
    _timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    on_deadline: Callable[[str], None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.await_head(start_clock=True)

    def await_head(self, start_clock: bool) -> None:
        """A new head is due; on a kept-alive connection its clock starts with its first byte."""
        self._enter(Phase.HEAD, self.header_bytes, budget_is_a_limit=False)
        self.start_clock() if start_clock else self._arm()

    def start_idle_clock(self) -> None:
        """The answer is going out: from now on the connection waits for a next request, for a while."""
        if self.phase is Phase.HEAD and not self.head_begun:
            self.deadline = time.monotonic() + self.idle_timeout_s
            self._arm()

    def start_clock(self) -> None:
        self.head_begun = True
        self.deadline = time.monotonic() + self.header_timeout_s
        self._arm()

    def await_body(self, body_bytes: int, *, declared: bool) -> None:
        self._enter(Phase.BODY, on_the_wire(body_bytes), budget_is_a_limit=not declared)

    def open(self) -> None:
        self._enter(Phase.OPEN, 0, budget_is_a_limit=False)

    def close(self) -> None:
        self.on_deadline = None
        self._arm()

    def _enter(self, phase: Phase, budget: int, budget_is_a_limit: bool) -> None:
        self.phase, self.budget, self.budget_is_a_limit = phase, budget, budget_is_a_limit
        self.deadline, self.head_begun = None, False
        self.generation += 1
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = None
        self._arm()

    def phase_changed(self) -> asyncio.Future:
        """Resolves at the next phase change (never cancel it: every reader of this phase shares it)."""
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.phase is Phase.HEAD and self.deadline is not None and self.on_deadline is not None:
            # The loop's clock is time.monotonic(), the deadline's.
            self._timer = asyncio.get_running_loop().call_at(self.deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self.phase is Phase.HEAD and self.deadline is not None and self.on_deadline is not None:
            if time.monotonic() >= self.deadline:
                self.on_deadline(HEAD_LATE if self.head_begun else IDLE_TOO_LONG)
            else:
                self._arm()


class ConnectionCutOff(ConnectionResetError):
    """Raised from a read: mitmproxy takes it as the peer going away and closes the connection."""


class MeteredReader:
    """Wraps a client connection's reader (an asyncio.StreamReader); mitmproxy's read loop calls `read` only."""

    def __init__(self, inner: asyncio.StreamReader, meter: Meter, peer: str) -> None:
        self._inner, self._meter, self._peer = inner, meter, peer
        self._held_back = False  # a read waits in _wait_for_next_phase, which ends it with its own reason
        meter.on_deadline = self._cut_off
        meter._arm()  # the first head's clock started before this reader was put in place

    async def read(self, n: int) -> bytes:
        meter = self._meter
        while meter.phase is not Phase.OPEN and meter.budget <= 0:
            await self._wait_for_next_phase()
        generation, phase = meter.generation, meter.phase
        data = await self._inner.read(n if phase is Phase.OPEN else min(n, meter.budget))
        # mitmproxy's hooks run beside this read loop, so a read may end in a later phase than it
        # began in. It was sized by the budget of the phase it began in and is charged to that one:
        # the new phase's budget stays whole (the slack is one read, at most the old budget).
        if meter.generation == generation and phase is not Phase.OPEN:
            meter.budget -= len(data)
        # A kept-alive connection's next head starts its clock with its first byte, even when the
        # read that brought it began in the phase before (it was waiting when the request ended).
        if data and meter.phase is Phase.HEAD and not meter.head_begun:
            meter.start_clock()
        return data

    async def _wait_for_next_phase(self) -> None:
        meter = self._meter
        if meter.budget_is_a_limit:
            raise self._cut("request body of unknown length over its bound")
        what = "request head over its size bound" if meter.phase is Phase.HEAD else "request body not taken in time"
        timeout = meter.header_timeout_s if meter.deadline is None else max(0.0, meter.deadline - time.monotonic())
        self._held_back = True
        try:
            done, _ = await asyncio.wait({meter.phase_changed()}, timeout=timeout)
        finally:
            self._held_back = False
        if not done:
            raise self._cut(what)

    def _cut_off(self, why: str) -> None:
        """The deadline passed: the pending read (and every later one) raises."""
        if not self._held_back:  # a held-back read times out with the deadline and says why
            self._inner.set_exception(self._cut(why))

    def _cut(self, why: str) -> ConnectionCutOff:
        self._meter.close()  # once: a deadline due later must not cut (and log) again
        # Closing an idle pooled connection is routine: a line for each would bury the rest.
        logger.log(logging.DEBUG if why == IDLE_TOO_LONG else logging.INFO,
                   "keybrake: closed the connection of %s: %s", self._peer, why)
        return ConnectionCutOff(why)

    def __getattr__(self, name):
        return getattr(self._inner, name)


class Bounds:
    """Meters client connections and caps how many there are (see the module docstring)."""

    def __init__(self) -> None:
        self.meters: dict[str, Meter] = {}
        self.http_layers: dict[str, HttpLayer] = {}  # each metered client's newest, by client id
        self.per_address: Counter[str] = Counter()
        self.admitted: set[str] = set()

    def load(self, loader) -> None:
        loader.add_option("keybrake_max_header_bytes", str, DEFAULT_MAX_HEADER_BYTES,
                          "Most bytes a request line and headers may take (k/m suffixes).")
        loader.add_option("keybrake_header_timeout", float, DEFAULT_HEADER_TIMEOUT_S,
                          "Seconds a request's line and headers have to arrive in full.")
        loader.add_option("keybrake_idle_timeout", float, DEFAULT_IDLE_TIMEOUT_S,
                          "Seconds a kept-alive connection may wait for its next request after an answer.")
        loader.add_option("keybrake_max_vendor_body", str, DEFAULT_MAX_VENDOR_BODY,
                          "Most bytes of a request body to a vendor (k/m suffixes).")
        loader.add_option("keybrake_max_conns_per_address", int, DEFAULT_MAX_CONNS_PER_ADDRESS,
                          "Most connections open at once from one client address.")
        loader.add_option("keybrake_max_conns", int, DEFAULT_MAX_CONNS, "Most client connections open at once.")

    def configure(self, updated) -> None:
        for name in ("keybrake_max_header_bytes", "keybrake_max_vendor_body"):
            if name in updated:
                self._size(name)
        for name in ("keybrake_header_timeout", "keybrake_idle_timeout", "keybrake_max_conns_per_address",
                     "keybrake_max_conns"):
            if name in updated and getattr(ctx.options, name) <= 0:
                raise exceptions.OptionsError(f"{name} must be above 0")

    @staticmethod
    def _size(name: str) -> int:
        try:
            size = human.parse_size(getattr(ctx.options, name))
        except ValueError:
            size = None
        if size is None or size <= 0:
            raise exceptions.OptionsError(f"{name} takes a size such as 64k or 4m; got {getattr(ctx.options, name)!r}")
        return size

    def client_connected(self, client: connection.Client) -> None:
        address = client.peername[0]
        if self.per_address[address] >= ctx.options.keybrake_max_conns_per_address:
            client.error = f"over {ctx.options.keybrake_max_conns_per_address} connections from this address"
        elif len(self.admitted) >= ctx.options.keybrake_max_conns:
            client.error = f"over {ctx.options.keybrake_max_conns} connections in all"
        if client.error:
            logger.info("keybrake: refused a connection from %s: %s", address, client.error)
            return
        self.per_address[address] += 1
        self.admitted.add(client.id)
        self._meter(client)

    def client_disconnected(self, client: connection.Client) -> None:
        if client.id not in self.admitted:
            return
        self.admitted.discard(client.id)
        if (meter := self.meters.pop(client.id, None)) is not None:
            meter.close()
        self.http_layers.pop(client.id, None)
        address = client.peername[0]
        self.per_address[address] -= 1
        if self.per_address[address] <= 0:
            del self.per_address[address]

    def _meter(self, client: connection.Client) -> None:
        """Put a MeteredReader between mitmproxy's read loop and the client socket.

        mitmproxy has no hook for bytes before a request head is parsed, so this reaches into its
        connection handler: the read loop fetches the reader only after `client_connected`.
        """
        handler = ctx.master.addons.get("proxyserver").connections.get(client.id)
        io = handler.transports.get(client) if handler is not None else None
        if io is None or not isinstance(io.reader, asyncio.StreamReader):  # TCP only
            return
        meter = Meter(self._size("keybrake_max_header_bytes"), ctx.options.keybrake_header_timeout,
                      ctx.options.keybrake_idle_timeout)
        self.meters[client.id] = meter
        io.reader = MeteredReader(io.reader, meter, f"{client.peername[0]}:{client.peername[1]}")

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        meter = self.meters.get(flow.client_conn.id)
        if meter is None:
            return
        limit, hard_limit = self._body_limits(flow)
        declared = _declared_length(flow.request)
        if declared is None:
            meter.await_body(limit, declared=False)
        elif declared > hard_limit:
            logger.info("keybrake: refused %s %s from %s: a body of %d bytes is over the %d-byte bound",
                        flow.request.method, loggable(flow.request.path), flow.client_conn.peername[0],
                        declared, hard_limit)
            flow.kill()
        else:
            meter.await_body(declared, declared=True)

    def _body_limits(self, flow: http.HTTPFlow) -> tuple[int, int]:
        """(bound of a body of unknown length, bound of a declared one) for this request's route."""
        if (isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode)
                and listener_vendor_route(flow.request.path) is None):
            # The listener's own app (the vault API, metrics...): Keybrake answers a declared body
            # up to UNREADABLE_BODY_BYTES with a 413 of its own.
            return MAX_BODY_BYTES, UNREADABLE_BODY_BYTES
        vendor_limit = self._size("keybrake_max_vendor_body")
        return vendor_limit, vendor_limit

    def next_layer(self, nextlayer) -> None:
        # After mitmproxy's NextLayer addon, which decided the layer (or waits for more bytes).
        client_id = nextlayer.context.client.id
        if isinstance(nextlayer.layer, HttpLayer) and client_id in self.meters:
            self.http_layers[client_id] = nextlayer.layer
        elif isinstance(nextlayer.layer, TCPLayer) and (meter := self.meters.get(client_id)):
            meter.open()  # a blind tunnel to a host Keybrake does not front: its bytes are not ours to bound

    def request(self, flow: http.HTTPFlow) -> None:
        # The idle clock waits for the answer: a slow vendor call is not idleness.
        if meter := self.meters.get(flow.client_conn.id):
            meter.await_head(start_clock=self._next_head_begun(flow.client_conn))

    def response(self, flow: http.HTTPFlow) -> None:
        if meter := self.meters.get(flow.client_conn.id):
            meter.start_idle_clock()

    error = response  # an error answer goes out too: the connection is idle from then on

    def _next_head_begun(self, client: connection.Client) -> bool:
        """Whether the read that ended this request brought bytes of the next head too.

        No later read may come to start that head's clock, so it starts now. Only mitmproxy's HTTP/1
        parser knows what it holds beyond the request, so this reads its buffer (as `_meter` reaches
        into the connection handler). Bytes still inside an incomplete TLS record are not seen here:
        the idle deadline bounds those.
        """
        http_layer = self.http_layers.get(client.id)
        parser = http_layer.connections.get(http_layer.context.client) if http_layer is not None else None
        return isinstance(parser, Http1Server) and bool(bytes(parser.buf).strip())

    def http_connected(self, flow: http.HTTPFlow) -> None:
        # Next comes a TLS handshake, plain HTTP, or a blind tunnel's first bytes (which mitmproxy
        # reads to decide that it is one): all metered as a head until next_layer says "tunnel".
        if meter := self.meters.get(flow.client_conn.id):
            meter.await_head(start_clock=True)

    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        # A refused CONNECT (407, 403) keeps the connection for another request: still metered.
        if meter := self.meters.get(flow.client_conn.id):
            meter.await_head(start_clock=False)
            meter.start_idle_clock()

    def tls_established_client(self, data) -> None:
        if meter := self.meters.get(data.context.client.id):
            meter.await_head(start_clock=True)


def _declared_length(request: http.Request) -> int | None:
    """The body's length when known from the head: Content-Length, or 0 without any body framing."""
    if "transfer-encoding" in request.headers:
        return None
    length = request.headers.get("content-length")
    if length is None:
        return 0
    return int(length) if length.strip().isdigit() else None


def raise_open_files_limit() -> None:
    """Every connection is a file descriptor: take the soft limit up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as failure:
            logger.warning("keybrake: could not raise the open-files limit from %d: %s", soft, failure)
