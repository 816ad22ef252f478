"""The mitmproxy addon: thin glue between flows and the gate.

On the API listener (reverse mode) only the vendor routes are the addon's; every other request
there is handed, in-process, to the listener's ASGI app (listener/app.py: the vault API, health,
metrics, later the dashboard).

Only the vendor hosts are intercepted (`allow_hosts`, set by the proxy runner); every other
CONNECT is tunnelled untouched, if the egress addon (egress.py) lets it through. A vendor request is checked before any upstream connection
exists (lazy connection strategy), so a refused call never reaches the vendor.
"""

import asyncio
import ipaddress
import json
import logging
import time
import traceback
from collections.abc import Sequence
from types import ModuleType
from urllib.parse import urlsplit

from mitmproxy import ctx, exceptions, http
from mitmproxy.proxy import mode_specs

from .access_log import AccessLog
from .alerts.deliverer import DELIVERY_RESULTS
from .api.vault_api import MAX_BODY_BYTES, VaultApi
from .asgi_flow import serve as serve_asgi
from .draining import DEFAULT_DRAIN_TIMEOUT_S, DrainReport, InFlight
from .gate import UNAVAILABLE_RETRY_AFTER_S, Decision, Gate, Ticket
from .gate_opener import GateOpener
from .health import HealthServer, OneRequestServer, is_health_path
from .home import KeybrakeHome
from .ledger.migrations import SchemaMismatch
from .ledger.opening import database_of
from .listener.app import build_listener_app
from .listener.dashboard_mount import dashboard_mount
from .listener.metrics_page import MetricsPage
from .listener.services import LedgerAccess, ListenerServices
from .metrics.registry import Metrics
from .pricing import PricingError, load_pricing
from .vendor_errors import UnreachableVendors
from .vault.crypto import MasterKeyError
from .vendors import VENDORS, vendor_for_host
from .vendors.base import (
    Refusal,
    RefusalKind,
    RenderedResponse,
    VendorRequest,
    VendorResponse,
    malformed_header_lines,
    repeated_single_valued_headers,
)

logger = logging.getLogger("keybrake")

TICKET = "keybrake_ticket"
VENDOR = "keybrake_vendor"
STRIPE_VERSION_PREFIX = "v1"
UNREADABLE_BODY_BYTES = 1024 * 1024  # a body to the listener's app this big is not read, let alone parsed
KEYBRAKE_HEADER_PREFIX = "x-keybrake-"
READY_PROBE_TIMEOUT_S = 2.0
DEFAULT_METRICS_HOST = "127.0.0.1"  # the unauthenticated metrics stay on this host unless told otherwise
ANSWER_FLUSH_S = 0.1  # after the last response hook of a drain, for mitmproxy to write that answer


def parse_upstreams(entries: Sequence[str]) -> dict[str, tuple[str, str, int, str]]:
    """`VENDOR=URL` entries as vendor -> (scheme, host, port, path prefix)."""
    parsed = {}
    for entry in entries:
        vendor, sep, url = entry.partition("=")
        if not sep or vendor not in VENDORS:
            raise exceptions.OptionsError(
                f"--upstream takes VENDOR=URL with VENDOR one of {', '.join(sorted(VENDORS))}; got {entry!r}")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise exceptions.OptionsError(f"--upstream {vendor}: expected an http(s) URL, got {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        parsed[vendor] = (parts.scheme, parts.hostname, port, parts.path.rstrip("/"))
    return parsed


class LedgerNotOpen(Exception):
    """The ledger could not be opened (yet): nothing that needs it can be decided."""


class Keybrake:
    def __init__(self, access_log: AccessLog | None = None) -> None:
        self.access_log = access_log or AccessLog()  # configured by the AccessLogAddon, if the proxy runs one
        self.gate: Gate | None = None
        self.api: VaultApi | None = None
        self._opener: GateOpener | None = None
        self.upstreams: dict[str, tuple[str, str, int, str]] = {}
        self.in_flight = InFlight()
        self.draining = False
        self._health_server: HealthServer | None = None
        self.health_port: int | None = None  # bound, once running
        self._metrics_server: OneRequestServer | None = None
        self.metrics_port: int | None = None  # bound, once running
        self.metrics = Metrics()  # this process's own registry
        self.metrics.watch(in_flight=lambda: len(self.in_flight),
                           settlements_queued=lambda: self.gate.ledger.unsettled if self.gate is not None else 0)
        self.metrics_page = MetricsPage(self.metrics, self._ledger_access)
        DELIVERY_RESULTS.listeners.append(self._count_alert_delivery)
        self._listener_services = ListenerServices(
            ledger=self._ledger_access, vault_api=self._vault_api, not_ready_reason=self._not_ready_reason,
            is_ready=self.is_ready)
        self.listener_app = build_listener_app(self._listener_services, self.metrics_page,
                                               extra_routes=dashboard_mount(None, tls=False))
        self.unreachable = UnreachableVendors()

    def _count_alert_delivery(self, result: str) -> None:
        # The deliverer's words to the metric's: an attempt that failed and will be retried is
        # "failed"; one given up after its last retry is "abandoned"; a cancelled one is neither.
        counted = {"delivered": "delivered", "retrying": "failed", "failed": "abandoned"}.get(result)
        if counted is not None:
            self.metrics.alert_delivery(counted)

    def load(self, loader) -> None:
        loader.add_option("keybrake_home", str, "", "The Keybrake home (database, master key, CA).")
        loader.add_option("keybrake_upstreams", Sequence[str], [],
                          "VENDOR=URL: send that vendor's traffic to another base URL (tests, staging, mocks).")
        loader.add_option("keybrake_database", str, "",
                          "The ledger database URL (postgresql://...); empty: the SQLite file in the home.")
        loader.add_option("keybrake_db_busy_timeout", float, 5.0,
                          "Seconds to wait for another writer's database lock before answering 503.")
        loader.add_option("keybrake_drain_timeout", float, DEFAULT_DRAIN_TIMEOUT_S,
                          "On SIGTERM, seconds to let vendor calls in flight and their settlements finish.")
        loader.add_option("keybrake_health_port", int | None, None,
                          "Also serve /healthz and /readyz on this port of the listen host (0 picks a free one).")
        loader.add_option("keybrake_metrics_port", int | None, None,
                          "Also serve GET /metrics, without a token, on this port of keybrake_metrics_host "
                          "(0 picks a free one).")
        loader.add_option("keybrake_metrics_host", str, DEFAULT_METRICS_HOST,
                          "The address keybrake_metrics_port listens on: keep it on a private scrape network.")

    def configure(self, updated) -> None:
        if "keybrake_metrics_port" in updated:
            port = ctx.options.keybrake_metrics_port
            if port is not None and not 0 <= port <= 65535:
                raise exceptions.OptionsError(f"--metrics-port takes a port from 0 to 65535; got {port}")
        if "keybrake_metrics_host" in updated:
            _check_listen_address(ctx.options.keybrake_metrics_host)
        if "keybrake_upstreams" in updated:
            self.upstreams = parse_upstreams(ctx.options.keybrake_upstreams)
        if updated & {"keybrake_home", "keybrake_db_busy_timeout", "keybrake_database"} and ctx.options.keybrake_home:
            home = KeybrakeHome.resolve(ctx.options.keybrake_home)
            try:
                database = database_of(ctx.options.keybrake_database or None, home.database)
                pricing = load_pricing(home.pricing_file)
                opener = GateOpener(home, pricing, ctx.options.keybrake_db_busy_timeout, database)
                gate = opener.open_or_wait()
            except (PricingError, MasterKeyError, SchemaMismatch, OSError, ValueError) as error:
                raise exceptions.OptionsError(str(error)) from None
            if self.gate is not None:
                self.gate.close()
            self._opener = opener
            self._use(gate)

    def _use(self, gate: Gate | None) -> None:
        self.gate = gate
        if gate is not None:
            gate.access_log = self.access_log
        self.api = VaultApi(gate.installation, gate.run_in_db) if gate is not None else None
        if gate is not None:
            gate.ledger.on_transaction = self.metrics.ledger_transaction
            # The dashboard needs the open ledger: the listener's app is rebuilt with it mounted.
            access = LedgerAccess(gate.installation.ledger, gate.run_in_db)
            self.listener_app = build_listener_app(self._listener_services, self.metrics_page,
                                                   extra_routes=dashboard_mount(access, tls=_api_tls_configured()))

    async def _vault_api(self) -> VaultApi | None:
        return self.api if await self._ready_gate() is not None else None

    async def _ledger_access(self) -> LedgerAccess | None:
        gate = self.gate or await self._ready_gate()
        return LedgerAccess(gate.installation.ledger, gate.run_in_db) if gate is not None else None

    async def _ready_gate(self) -> Gate | None:
        """The gate, opening it first if the ledger could not be opened so far."""
        if self.gate is None and self._opener is not None:
            gate = await self._opener.open_when_due()
            if gate is not None and self.gate is None:
                self._use(gate)
        return self.gate

    async def proxy_credential_active(self, credential_hash: str) -> bool:
        """Whether a forward-proxy password (by hash) is an active worker token or vault key (the
        KeybrakeProxyAuth addon's check). Raises when the ledger cannot answer: the caller refuses."""
        gate = self.gate or await self._ready_gate()
        if gate is None:
            raise LedgerNotOpen(self._not_ready_reason())
        return await gate.run_in_db(gate.installation.ledger.proxy_credential_active, credential_hash)

    async def running(self) -> None:
        port = ctx.options.keybrake_health_port
        if port is not None:
            server = HealthServer(self.is_ready)
            self.health_port = await _start(server, "--health-port", _listen_host(), port)
            self._health_server = server if self.health_port is not None else None
        port = ctx.options.keybrake_metrics_port
        if port is not None:
            server = OneRequestServer(self.metrics_page.unauthenticated_answer)
            self.metrics_port = await _start(server, "--metrics-port", ctx.options.keybrake_metrics_host, port)
            self._metrics_server = server if self.metrics_port is not None else None

    async def is_ready(self) -> bool:
        """Whether this proxy can take vendor calls now: what /readyz answers."""
        if self.draining or not _ca_loaded():
            return False
        try:
            async with asyncio.timeout(READY_PROBE_TIMEOUT_S):
                # Shielded: a probe that times out must not abandon a gate being opened.
                gate = await asyncio.shield(self._ready_gate())
                return gate is not None and await ledger_answers(gate)
        except Exception:  # noqa: BLE001 - whatever failed, the answer is "not ready"
            return False

    async def drain(self) -> DrainReport:
        """Graceful shutdown: refuse new connections, let admitted calls and their settlements finish.

        /readyz answers 503 from the first moment. Bounded by keybrake_drain_timeout in all.
        """
        started = time.monotonic()
        self.draining = True
        budget = ctx.options.keybrake_drain_timeout
        finished_before, in_flight = self.in_flight.finished, len(self.in_flight)
        logger.warning("keybrake: draining: new connections are refused; waiting up to %.1f s for %d call%s "
                       "in flight", budget, in_flight, "" if in_flight == 1 else "s")
        await _stop_listening()
        if await self.in_flight.wait_empty(budget - (time.monotonic() - started)) and in_flight:
            await asyncio.sleep(ANSWER_FLUSH_S)
        settlements_left = 0
        if self.gate is not None:
            settlements_left = await self.gate.drain(max(0.0, budget - (time.monotonic() - started)))
        report = DrainReport(calls_drained=self.in_flight.finished - finished_before,
                             calls_left=len(self.in_flight), settlements_left=settlements_left,
                             seconds=time.monotonic() - started)
        logger.warning(report.message())
        return report

    async def done(self) -> None:
        for server in (self._health_server, self._metrics_server):
            if server is not None:
                server.close()
        self._health_server = self._metrics_server = None
        if self.gate is not None:
            await self.gate.drain()
            self.gate.close()
            self.gate = None

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Refuse a body to the listener's app (the vault API, /metrics...) over the limit before
        mitmproxy reads it, when its size is declared.

        A response set here is sent only once mitmproxy has read the body, so a body far over the
        limit is not read at all: the connection is closed instead of answered.
        """
        if not isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode):
            return
        if listener_vendor_route(flow.request.path) is not None:
            return  # a vendor call: the Bounds addon holds it to the vendor body limit
        if not flow.killable:
            return  # cut off already (the Bounds addon, which runs first): killing it again raises
        length = flow.request.headers.get("content-length", "0")
        declared = int(length) if length.isdigit() else UNREADABLE_BODY_BYTES + 1
        if declared > UNREADABLE_BODY_BYTES:
            flow.kill()
        elif declared > MAX_BODY_BYTES:
            self._answer_here(flow, _api_error(413, "body_too_large", f"the body is over {MAX_BODY_BYTES} bytes"))

    async def request(self, flow: http.HTTPFlow) -> None:
        try:
            if flow.response is not None:
                return  # answered by an earlier hook (an oversized body, proxy authentication): final
            if isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode):
                await self._api_listener_request(flow)
                return
            vendor = _vendor_of(flow)
            if vendor is None:
                return  # not ours: the egress addon has applied the egress policy to it
            await self._gate(flow, vendor)
        except Exception as failure:
            # mitmproxy would log the error and forward the request anyway: never let it.
            _log_unexpected("request", failure)
            self._take_ticket(flow)  # a hold it made stays counted: never under-count
            self._answer_here(flow, _unexpected_error_answer(flow.metadata.get(VENDOR)))

    async def _api_listener_request(self, flow: http.HTTPFlow) -> None:
        """The API listener: /stripe/*, /twilio/*, /resend/* and /v1/* go to the gate; every other
        path to the listener's app (the vault API, health, metrics).

        The vendor comes from the path prefix, never from the Host header. Nothing else is
        forwarded: the listener's reverse target is a placeholder that is never connected to.
        """
        path = flow.request.path
        # Health before the TLS check: its answer carries nothing secret, and probers often speak plain HTTP.
        if not is_health_path(path) and ctx.options.certs and not flow.client_conn.tls_established:
            # mitmproxy's reverse mode also accepts plain HTTP on a TLS port: an admin token or a
            # vault key must not cross it in the clear when the operator asked for TLS.
            self._answer_here(flow, _api_error(403, "tls_required", "this listener takes HTTPS only"))
            return
        route = listener_vendor_route(path)
        if route is None:
            if self.gate is None and not is_health_path(path):
                # The dashboard is mounted once the ledger opens, and nothing else on its path
                # would try: try here (at most every second, off the event loop), as the vault
                # API and the vendor gate do.
                await self._ready_gate()
            if self.gate is not None:
                self.gate.ledger.flush_settlements()  # read your writes: this replica's answered calls
            await serve_asgi(self.listener_app, flow)
            return
        vendor, rest = route
        flow.request.path = "/" + rest
        await self._gate(flow, vendor)

    async def _gate(self, flow: http.HTTPFlow, vendor) -> None:
        started = time.perf_counter()
        flow.metadata[VENDOR] = vendor  # for the shape of an unexpected error's answer
        for name in [n for n in flow.request.headers if n.lower().startswith(KEYBRAKE_HEADER_PREFIX)]:
            del flow.request.headers[name]
        if self.draining:  # a new call on a connection opened before the drain began
            self._refuse_unchecked(flow, vendor,
                                   "Keybrake is shutting down, so it forwarded nothing. Retrying is safe.")
            self.metrics.vendor_call(vendor.NAME, RefusalKind.UNAVAILABLE, time.perf_counter() - started)
            return
        gate = self.gate or await self._ready_gate()  # the await only while the ledger is not open yet
        if gate is None:
            self._refuse_unchecked(flow, vendor, self._not_ready_reason())
            self.metrics.vendor_call(vendor.NAME, RefusalKind.UNAVAILABLE, time.perf_counter() - started)
            return
        decision = await gate.check(vendor, _vendor_request(flow), flow.client_conn.peername[0])
        self.metrics.vendor_call(vendor.NAME, decision.refused_as, time.perf_counter() - started)
        if decision.refusal is not None:
            self._answer_here(flow, decision.refusal)
            return
        self._forward(flow, vendor, decision)

    def _refuse_unchecked(self, flow: http.HTTPFlow, vendor, reason: str) -> None:
        """A 503 for a call the gate never saw (draining, no ledger yet): the access log's line is written here."""
        rendered = vendor.render_refusal(Refusal(RefusalKind.UNAVAILABLE, reason,
                                                 retry_after_s=UNAVAILABLE_RETRY_AFTER_S))
        self.access_log.refused(vendor.NAME, flow.request.method.upper(), flow.request.path.partition("?")[0], rendered)
        self._answer_here(flow, rendered)

    def _not_ready_reason(self) -> str:
        if self._opener is None:
            return "Keybrake is not configured (no home)."
        return ("Keybrake cannot open its ledger, so it forwarded nothing. Retrying is safe. "
                "The proxy log says why.")

    def _forward(self, flow: http.HTTPFlow, vendor, decision: Decision) -> None:
        flow.metadata[TICKET] = decision.ticket
        self.in_flight.add(flow.id)
        flow.request.headers["authorization"] = decision.authorization
        if decision.forward_body is not None:
            flow.request.content = decision.forward_body  # mitmproxy updates Content-Length
        if upstream := self.upstreams.get(vendor.NAME):
            scheme, host, port, prefix = upstream
            flow.request.scheme, flow.request.host, flow.request.port = scheme, host, port
            flow.request.path = prefix + flow.request.path
        else:
            # The real secret only ever travels over TLS, even if the client spoke plain HTTP to us.
            flow.request.scheme, flow.request.host, flow.request.port = "https", vendor.HOSTS[0], 443

    @staticmethod
    def _answer_here(flow: http.HTTPFlow, rendered: RenderedResponse) -> None:
        """Answer from the proxy itself and forward nothing: a refusal, or another answer the gate decided."""
        flow.response = http.Response.make(rendered.status, rendered.body, rendered.headers)

    def _take_ticket(self, flow: http.HTTPFlow) -> Ticket | None:
        """The call's ticket, once: from here on the call is no longer in flight."""
        self.in_flight.discard(flow.id)
        return flow.metadata.pop(TICKET, None)

    async def response(self, flow: http.HTTPFlow) -> None:
        ticket = self._take_ticket(flow)
        if ticket is None or self.gate is None:
            return
        response = flow.response
        try:
            headers = self.gate.settle_after_reply(ticket, VendorResponse(
                response.status_code, _lowered(response.headers), response.content or b""))
        except Exception as failure:
            _log_unexpected("response", failure)  # the hold stays counted until reconciled
            headers = {"x-keybrake-key-id": ticket.key_id, "x-keybrake-settled": "false"}
        response.headers.update(headers)

    def server_connect_error(self, data) -> None:
        """The vendor could not be reached (DNS, refused, timeout): the error hook says so (vendor_errors.py)."""
        self.unreachable.failed(data.client, data.server)

    async def error(self, flow: http.HTTPFlow) -> None:
        ticket = self._take_ticket(flow)
        unreachable = self.unreachable.take(flow.client_conn)
        if ticket is None or self.gate is None:
            return
        # If a connection to the vendor was made, the request may have reached it: keep the hold.
        request_sent = flow.server_conn is not None and flow.server_conn.timestamp_tcp_setup is not None
        client_status = None
        if unreachable is not None and not request_sent:
            client_status = self.unreachable.report(ticket, unreachable)
        self.gate.settle_without_reply(ticket, request_sent=request_sent, error=str(flow.error)[:200],
                                       client_status=client_status)


async def ledger_answers(gate: Gate) -> bool:
    """The readiness probe: one cheap read of the ledger, on the gate's database thread.

    One function, so it can follow the ledger's interface as that changes.
    """
    try:
        async with asyncio.timeout(READY_PROBE_TIMEOUT_S):
            await gate.run_in_db(gate.installation.ledger.get_meta, "schema_version")
    except Exception:  # noqa: BLE001 - any failure means "not ready"
        return False
    return True


def _api_tls_configured() -> bool:
    try:
        return bool(ctx.options.certs)
    except (AttributeError, KeyError):  # no master yet (in-process tests): no TLS
        return False


def _listen_host() -> str:
    """The host mitmproxy's listeners are bound to: the health listener shares it."""
    for server in ctx.master.addons.get("proxyserver").servers:
        if server.listen_addrs:
            return server.listen_addrs[0][0]
    return ctx.options.listen_host or "127.0.0.1"


def _ca_loaded() -> bool:
    tls = ctx.master.addons.get("tlsconfig")
    return tls is not None and tls.certstore is not None


async def _stop_listening() -> None:
    """Close mitmproxy's listening sockets; connections already accepted carry on."""
    servers = [server for server in ctx.master.addons.get("proxyserver").servers if server.is_running]
    for failure in await asyncio.gather(*(server.stop() for server in servers), return_exceptions=True):
        if failure is not None:
            logger.warning("keybrake: could not stop a listener while draining: %s", type(failure).__name__)


_UNEXPECTED = "Keybrake hit an unexpected error and forwarded nothing. Retrying is safe; the proxy log says more."


def _unexpected_error_answer(vendor) -> RenderedResponse:
    """The vendor's own error shape when the vendor is known, so its SDK raises its usual error."""
    if vendor is not None:
        return vendor.render_refusal(Refusal(RefusalKind.UNAVAILABLE, _UNEXPECTED,
                                             retry_after_s=UNAVAILABLE_RETRY_AFTER_S))
    body = {"error": {"type": "api_error", "code": RefusalKind.UNAVAILABLE.code, "message": _UNEXPECTED}}
    return RenderedResponse(503, {"content-type": "application/json", "retry-after": str(UNAVAILABLE_RETRY_AFTER_S),
                                  "x-keybrake-refusal": RefusalKind.UNAVAILABLE.code}, json.dumps(body).encode())


def _api_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> RenderedResponse:
    """An answer of the API listener itself, in the vault API's error shape."""
    return RenderedResponse(status, {"content-type": "application/json", **(headers or {})},
                            json.dumps({"error": {"code": code, "message": message}}).encode())


def listener_vendor_route(path: str) -> tuple[ModuleType, str] | None:
    """(vendor, path after its prefix) for a base-URL vendor route of the API listener, else None."""
    prefix, _, rest = path[1:].partition("/")
    vendor = VENDORS.get(prefix)
    if vendor is None and prefix == STRIPE_VERSION_PREFIX:
        # stripe-node takes host/port/protocol but no base path, so it sends /v1/... as is:
        # Stripe's version prefix names the vendor, still by path and never by Host.
        vendor, rest = VENDORS["stripe"], path[1:]
    return (vendor, rest) if vendor is not None else None


async def _start(server: OneRequestServer, flag: str, host: str, port: int) -> int | None:
    """Listen; the bound port, or None after logging why not."""
    try:
        return await server.start(host, port)
    except OSError as failure:
        # An error logged during start-up makes mitmproxy exit (status 1) right after.
        logger.error("keybrake: %s %d: cannot listen on %s: %s", flag, port, host, failure.strerror)
        return None


def _check_listen_address(host: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise exceptions.OptionsError(
            f"--metrics-host takes an IP address to listen on ({DEFAULT_METRICS_HOST} by default, 0.0.0.0 for "
            f"every interface); got {host!r}") from None


def _log_unexpected(hook: str, failure: Exception) -> None:
    """Where it failed, never the exception's text: that could quote a header or a secret."""
    frame = traceback.extract_tb(failure.__traceback__)[-1] if failure.__traceback__ else None
    where = f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" if frame else "?"
    logger.error("keybrake: unexpected %s in the %s hook at %s", type(failure).__name__, hook, where)


def _lowered(headers) -> dict[str, str]:
    """A plain dict of a mitmproxy Headers, in one pass over its raw fields."""
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in headers.fields}


def _vendor_of(flow: http.HTTPFlow):
    """The vendor whose host this request targets, by connection target or Host header."""
    candidates = {flow.request.host, flow.request.pretty_host}
    if flow.server_conn and flow.server_conn.address:
        candidates.add(flow.server_conn.address[0])
    # Any vendor match means the gate applies: a vault key for one vendor is refused by another.
    return next((v for v in map(vendor_for_host, filter(None, candidates)) if v is not None), None)


def _vendor_request(flow: http.HTTPFlow) -> VendorRequest:
    request = flow.request
    path, _, query = request.path.partition("?")
    return VendorRequest(
        method=request.method.upper(), path=path, query=query,
        headers=_lowered(request.headers),
        body=request.raw_content or b"",  # the bytes the vendor gets: an encoded body is refused (body_framing.py)
        repeated_headers=repeated_single_valued_headers(request.headers.fields),
        malformed_headers=malformed_header_lines(request.headers.fields),
    )
