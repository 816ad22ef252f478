"""Run mitmproxy with the Keybrake addon and the home's CA.

The forward listener (regular mode) is what HTTPS_PROXY points at. The optional API listener
(reverse mode, `--api-port`) serves the vault API, health, metrics and the base-URL vendor routes.
The optional health listener (`--health-port`) serves only /healthz and /readyz, the optional
metrics listener (`--metrics-port`, loopback unless `--metrics-host`) only /metrics, without a token.

SIGTERM (or Ctrl-C) drains: listeners close, calls in flight finish and settle for up to the drain
timeout, then the proxy exits. A second signal stops without waiting for them.
"""

import asyncio
import errno
import re
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mitmproxy import ctx, options
from mitmproxy.proxy import mode_specs

from .access_log import AccessLog
from .access_log_addon import AccessLogAddon
from .addon import DEFAULT_METRICS_HOST, Keybrake
from .draining import DEFAULT_DRAIN_TIMEOUT_S
from .bounds import Bounds, raise_open_files_limit
from .egress import Egress
from .egress_policy import default_mode
from .home import KeybrakeHome
from .mitm_master import KeybrakeMaster
from .proxy_auth import KeybrakeProxyAuth, is_loopback
from .vendors import VENDOR_HOSTS

# The API listener's reverse target. Never connected to: every request on that listener is
# answered by the addon or re-targeted at a vendor before mitmproxy opens a connection (lazy).
UNUSED_REVERSE_TARGET = "http://127.0.0.1:9"

Address = tuple[str, int]


@dataclass(frozen=True)
class ProxySettings:
    home: KeybrakeHome
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    api_port: int | None = None
    upstreams: Sequence[str] = ()
    egress: str | None = None  # deny, allowlist or open; None: open on a loopback listener, else allowlist
    egress_allow: Sequence[str] = ()  # NAME, *.DOMAIN, either with :PORT
    egress_allow_private: Sequence[str] = ()  # CIDRs an allowlisted name may resolve into
    db_busy_timeout_s: float = 5.0
    database_url: str = ""  # empty: the SQLite file in the home
    quiet: bool = False
    api_tls_certs: Sequence[str] = ()  # mitmproxy `certs` entries for the API listener's own certificate
    health_port: int | None = None
    metrics_port: int | None = None
    metrics_host: str = DEFAULT_METRICS_HOST
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    on_listening: list[Callable[["Listening"], None]] = field(default_factory=list)
    bounds: dict[str, object] = field(default_factory=dict)  # keybrake_max_* options of the Bounds addon
    proxy_auth: str | None = None  # "required" | "off"; None: required unless the listen host is loopback
    insecure_open_proxy: bool = False  # allow proxy_auth "off" on a non-loopback listen host
    access_log: str = "off"  # json, text or off: one line per vendor call and per refusal
    access_log_file: str = ""  # empty: stderr

    def proxy_auth_mode(self) -> str:
        if self.proxy_auth is not None:
            return self.proxy_auth
        return "off" if is_loopback(self.listen_host) else "required"


def intercept_patterns() -> list[str]:
    """mitmproxy intercepts only hosts matching these; every other CONNECT is a blind tunnel.

    The API listener's placeholder target is listed too: mitmproxy applies this list to every
    listener, and an unlisted target would make the API listener a raw TCP tunnel.
    """
    placeholder = UNUSED_REVERSE_TARGET.removeprefix("http://")
    return [rf"^{re.escape(host)}(:\d+)?$" for host in VENDOR_HOSTS] + [rf"^{re.escape(placeholder)}$"]


def modes(settings: ProxySettings) -> list[str]:
    listen = [f"regular@{settings.listen_host}:{settings.listen_port}"]
    if settings.api_port is not None:
        # mitmproxy refuses two listeners with the same spec, so "both on port 0" needs a real port.
        api_port = settings.api_port or free_port(settings.listen_host)
        listen.append(f"reverse:{UNUSED_REVERSE_TARGET}@{settings.listen_host}:{api_port}")
    return listen


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class Listening:
    """Where each listener is, once every one is bound (a port may have been 0)."""

    forward: Address
    api: Address | None = None
    health: Address | None = None
    metrics: Address | None = None


class _ReadyLine:
    """Reports where each listener is once its sockets are bound (a port may have been 0)."""

    def __init__(self, settings: ProxySettings, keybrake: Keybrake) -> None:
        self.settings = settings
        self.keybrake = keybrake  # added before this addon, so its health and metrics listeners are bound by now

    def running(self) -> None:
        forward = api = None
        for server in ctx.master.addons.get("proxyserver").servers:
            host, port = server.listen_addrs[0][:2]
            if isinstance(server.mode, mode_specs.ReverseMode):
                api = (host, port)
            else:
                forward = (host, port)
        health = metrics = None
        if self.keybrake.health_port is not None:
            health = (self.settings.listen_host, self.keybrake.health_port)
        if self.keybrake.metrics_port is not None:
            metrics = (self.settings.metrics_host, self.keybrake.metrics_port)
        for callback in self.settings.on_listening:
            callback(Listening(forward, api, health, metrics))


class _Shutdown:
    """The signal handler: the first SIGTERM or SIGINT drains, then stops; a second one stops without waiting."""

    def __init__(self, master: KeybrakeMaster, keybrake: Keybrake) -> None:
        self.master = master
        self.keybrake = keybrake
        self.draining: asyncio.Task | None = None

    def __call__(self) -> None:
        if self.draining is None:
            self.draining = asyncio.ensure_future(self._drain_then_stop())
        else:
            self.master.shutdown()

    async def _drain_then_stop(self) -> None:
        try:
            await self.keybrake.drain()
        finally:
            self.master.shutdown()


async def run_proxy(settings: ProxySettings) -> None:
    raise_open_files_limit()
    master = KeybrakeMaster(options.Options(), with_termlog=not settings.quiet)
    access_log = AccessLog()
    keybrake = Keybrake(access_log)
    # Bounds first: its hooks meter a connection before Keybrake's (which may wait on the ledger) run.
    # KeybrakeProxyAuth next: nothing else runs for a forward-proxy request that is not authenticated
    # (not even the egress policy, whose answer would tell a stranger what it allows).
    # Egress before Keybrake: a destination it refuses is answered before the gate sees the flow.
    # AccessLogAddon after Keybrake: its `done` closes the log once the gate has drained.
    master.addons.add(Bounds(), KeybrakeProxyAuth(keybrake.proxy_credential_active), Egress(), keybrake,
                      AccessLogAddon(access_log), _ReadyLine(settings, keybrake))
    # Options of mitmproxy's own addons exist only once the master has loaded them.
    master.options.update(
        confdir=str(settings.home.mitmproxy_confdir),
        mode=modes(settings),
        connection_strategy="lazy",
        allow_hosts=intercept_patterns(),
        certs=list(settings.api_tls_certs),
        termlog_verbosity="warn",
        http2=False,  # one request at a time per client connection: the Bounds meter counts per connection
        # The API listener's app sees the Host the client sent, not the placeholder reverse target:
        # the dashboard's forms check that the browser's Origin names this listener. (Only reverse
        # mode reads this; a vendor call's Host is set to the vendor's when it is re-targeted.)
        keep_host_header=True,
        keybrake_home=str(settings.home.root),
        keybrake_upstreams=list(settings.upstreams),
        keybrake_egress=settings.egress or default_mode(settings.listen_host).value,
        keybrake_egress_allow=list(settings.egress_allow),
        keybrake_egress_allow_private=list(settings.egress_allow_private),
        keybrake_db_busy_timeout=settings.db_busy_timeout_s,
        keybrake_database=settings.database_url,
        keybrake_drain_timeout=settings.drain_timeout_s,
        keybrake_health_port=settings.health_port,
        keybrake_metrics_port=settings.metrics_port,
        keybrake_metrics_host=settings.metrics_host,
        keybrake_proxy_auth=settings.proxy_auth_mode(),
        keybrake_insecure_open_proxy=settings.insecure_open_proxy,
        keybrake_access_log=settings.access_log,
        keybrake_access_log_file=settings.access_log_file,
        **settings.bounds,
    )
    loop = asyncio.get_running_loop()
    shutdown = _Shutdown(master, keybrake)
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, shutdown)
    await master.run()


class PortInUse(Exception):
    """A port the proxy was told to listen on cannot be had: which one, and the flag that moves it."""


def check_ports(settings: ProxySettings) -> None:
    """Before mitmproxy starts: its own message for a taken port names neither the flag nor, for the
    API listener, the right listener ("reverse proxy to http://127.0.0.1:9 failed to listen")."""
    wanted = [(flag, host, port) for flag, host, port in (
        ("--listen-port", settings.listen_host, settings.listen_port),
        ("--api-port", settings.listen_host, settings.api_port),
        ("--health-port", settings.listen_host, settings.health_port),
        ("--metrics-port", settings.metrics_host, settings.metrics_port)) if port]
    seen: dict[tuple[str, int], str] = {}
    for flag, host, port in wanted:
        if (host, port) in seen:
            raise PortInUse(f"{seen[host, port]} and {flag} are both {port}: give each listener its own port")
        seen[host, port] = flag
        if _taken(host, port):
            raise PortInUse(f"port {port} on {host or 'every interface'} ({flag}) is in use by another program: "
                            f"stop it, or choose another port with {flag}")


def _taken(host: str, port: int) -> bool:
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False  # mitmproxy says what is wrong with the host
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio binds: TIME_WAIT is no use
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    return True
    return False


def serve(settings: ProxySettings) -> None:
    """Run until stopped. Raises PortInUse before starting when a port it was given is taken."""
    check_ports(settings)
    try:
        asyncio.run(run_proxy(settings))
    except KeyboardInterrupt:
        sys.exit(130)
