"""Authentication for the forward proxy: without it, anyone who reaches the port can tunnel anywhere.

In the style of mitmproxy's own addons/proxyauth.py, for the forward (regular-mode) listener
only; the API listener has its own tokens. A client sends `Proxy-Authorization: Basic
base64(user:password)` (what `HTTPS_PROXY=http://worker:PASSWORD@host:port` makes every SDK send)
with any user name and, as the password, an active worker token (`kbw_...`) or an active vault
key. A CONNECT authenticates its whole tunnel; a plain-HTTP proxy request authenticates itself.

Every check reads the ledger off the event loop; a positive answer is cached for
CREDENTIAL_CACHE_S, so a revoked credential stops working within that time (requests inside an
open tunnel are re-checked too: the tunnel is cut). Failed attempts from one address beyond
SLOW_AFTER_FAILURES a minute each wait SLOW_DOWN_S before their 407.
"""

import asyncio
import base64
import binascii
import ipaddress
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

from mitmproxy import connection, ctx, exceptions, http
from mitmproxy.proxy import mode_specs

from .keyless_refusals import LogBudget
from .vault.vault_keys import hash_vault_key

logger = logging.getLogger("keybrake")

REALM = "keybrake"
CREDENTIAL_CACHE_S = 3.0  # the most a revoked worker token or vault key keeps working
SLOW_AFTER_FAILURES = 10  # failed attempts per address per window before each further one waits
FAILURE_WINDOW_S = 60.0
SLOW_DOWN_S = 1.0
MAX_TRACKED_ADDRESSES = 10_000  # the failure table forgets the least recent address beyond this
MAX_CACHED_CREDENTIALS = 4_096
HINT_HEADER = "x-keybrake-hint"  # what a refusal of a proxy request would say in its body (see without_body)
MAX_AUTHORIZATION_CHARS = 1_024  # a Proxy-Authorization longer than any real credential is not decoded

CredentialCheck = Callable[[str], Awaitable[bool]]  # credential hash -> active?
# One line per refused attempt is one line per stranger's request: bounded a minute.
_REFUSED_LOG, _UNCHECKED_LOG = LogBudget(), LogBudget()


def proxy_password(header: str) -> str | None:
    """The password of a `Basic` Proxy-Authorization value (any user name), or None."""
    if not header or len(header) > MAX_AUTHORIZATION_CHARS:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, colon, password = decoded.partition(":")
    return password if colon and password else None


class PositiveCache:
    """Credential hashes known active, each for `ttl_s`; bounded, the oldest forgotten first."""

    def __init__(self, ttl_s: float = CREDENTIAL_CACHE_S, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = MAX_CACHED_CREDENTIALS) -> None:
        self.ttl_s, self.clock, self.max_entries = ttl_s, clock, max_entries
        self._until: OrderedDict[str, float] = OrderedDict()

    def fresh(self, credential_hash: str) -> bool:
        until = self._until.get(credential_hash)
        if until is None:
            return False
        if self.clock() >= until:
            del self._until[credential_hash]
            return False
        return True

    def remember(self, credential_hash: str) -> None:
        self._until[credential_hash] = self.clock() + self.ttl_s
        self._until.move_to_end(credential_hash)
        while len(self._until) > self.max_entries:
            self._until.popitem(last=False)

    def __len__(self) -> int:
        return len(self._until)


class FailureTable:
    """Failed attempts per client address in a fixed window, to slow down guessing.

    Bounded in addresses: beyond `max_addresses` the one whose last failure is oldest is forgotten.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, limit: int = SLOW_AFTER_FAILURES,
                 window_s: float = FAILURE_WINDOW_S, max_addresses: int = MAX_TRACKED_ADDRESSES) -> None:
        self.clock, self.limit, self.window_s, self.max_addresses = clock, limit, window_s, max_addresses
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()  # address -> (window start, failures)

    def record(self, address: str) -> bool:
        """Count a failure; True when it is over the limit, so its answer should be slowed."""
        now = self.clock()
        started, failures = self._windows.get(address, (now, 0))
        if now - started >= self.window_s:
            started, failures = now, 0
        self._windows[address] = (started, failures + 1)
        self._windows.move_to_end(address)
        while len(self._windows) > self.max_addresses:
            self._windows.popitem(last=False)
        return failures + 1 > self.limit

    def __len__(self) -> int:
        return len(self._windows)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name or an empty host (every interface): not known to be loopback


def exposed_forward_hosts(modes: Sequence[str], default_host: str = "") -> list[str]:
    """The forward listeners' hosts that are not loopback ("" means every interface)."""
    hosts = []
    for spec in modes:
        mode = mode_specs.ProxyMode.parse(spec)
        host = mode.listen_host(default_host or None)
        if isinstance(mode, mode_specs.RegularMode) and not is_loopback(host):
            hosts.append(host or "0.0.0.0")
    return hosts


def proxy_auth_required() -> http.Response:
    # Connection: close, so each attempt costs a new connection and the connection's byte meter
    # (the Bounds addon) never carries on after a refused CONNECT.
    return without_body(407, "Keybrake proxy: authentication required. Put a worker token or a vault key as the "
                             "password of the proxy URL: http://worker:TOKEN@host:port",
                        {"Proxy-Authenticate": f'Basic realm="{REALM}"', "connection": "close"})


def credentials_unchecked() -> http.Response:
    return without_body(503, "Keybrake proxy cannot check proxy credentials now (its ledger does not answer); "
                             "nothing was forwarded. Retrying is safe.", {"retry-after": "1", "connection": "close"})


def without_body(status: int, hint: str, headers: dict[str, str]) -> http.Response:
    """An answer to a proxy request (a CONNECT above all) with its explanation in a header, no body.

    https-proxy-agent (stripe-node's proxy, and many Node clients') replays a failed CONNECT's
    answer from what it read with the head: a body arriving after it never comes, and the request
    hangs for ever (seen with stripe-node: tests/e2e/test_proxy_auth_sdks.py). Without a body the
    client gets the status at once.
    """
    return http.Response.make(status, b"", {**headers, HINT_HEADER: hint})


class KeybrakeProxyAuth:
    """Named apart from mitmproxy's own `proxyauth` addon, which the master always loads (unused)."""

    def __init__(self, credential_active: CredentialCheck, clock: Callable[[], float] = time.monotonic) -> None:
        self._credential_active = credential_active
        self.cache = PositiveCache(clock=clock)
        self.failures = FailureTable(clock=clock)
        self.required = True
        # The credential each CONNECT tunnel was opened with, re-checked on every request inside it.
        self.tunnels: weakref.WeakKeyDictionary[connection.Client, str] = weakref.WeakKeyDictionary()

    def load(self, loader) -> None:
        loader.add_option("keybrake_proxy_auth", str, "required",
                          "Whether the forward listener requires Proxy-Authorization with a worker token "
                          "or a vault key as the password.", choices=["required", "off"])
        loader.add_option("keybrake_insecure_open_proxy", bool, False,
                          "Allow keybrake_proxy_auth=off on a forward listener that is not on loopback.")

    def configure(self, updated) -> None:
        if updated & {"keybrake_proxy_auth", "keybrake_insecure_open_proxy", "mode", "listen_host"}:
            self.required = ctx.options.keybrake_proxy_auth == "required"
            exposed = exposed_forward_hosts(ctx.options.mode, ctx.options.listen_host)
            if not self.required and exposed and not ctx.options.keybrake_insecure_open_proxy:
                raise exceptions.OptionsError(
                    f"proxy authentication is off but the forward proxy listens on {', '.join(exposed)}: "
                    "anyone who reaches it could tunnel anywhere. Use --proxy-auth required, or "
                    "--insecure-open-proxy if that is really meant.")

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if self.required and _is_forward(flow):
            credential_hash = await self._authenticate(flow)
            if credential_hash is not None:
                self.tunnels[flow.client_conn] = credential_hash

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not _is_forward(flow):
            return
        if self.required:
            tunnel_credential = self.tunnels.get(flow.client_conn)
            if tunnel_credential is None:
                await self._authenticate(flow)
            elif not await self._still_active(tunnel_credential):
                flow.kill()  # the client reconnects, and its new CONNECT is answered 407
        # Never forwarded: the password is a worker token or a vault key.
        flow.request.headers.pop("Proxy-Authorization", None)

    async def _authenticate(self, flow: http.HTTPFlow) -> str | None:
        """The credential's hash if the request carries an active one; else answers it and returns None."""
        password = proxy_password(flow.request.headers.get("Proxy-Authorization", ""))
        credential_hash = hash_vault_key(password) if password else None
        try:
            if credential_hash is not None and await self._is_active(credential_hash):
                return credential_hash
        except Exception as failure:  # noqa: BLE001 - cannot decide: refuse, never let through
            _UNCHECKED_LOG.log(logger, logging.ERROR, "keybrake: cannot check a proxy credential: %s",
                               type(failure).__name__)
            flow.response = credentials_unchecked()
            return None
        address = flow.client_conn.peername[0]
        if self.failures.record(address):
            await asyncio.sleep(SLOW_DOWN_S)
        _REFUSED_LOG.log(logger, logging.INFO, "keybrake: refused a %s from %s: no valid proxy credential",
                         flow.request.method[:16], address)
        flow.response = proxy_auth_required()
        return None

    async def _still_active(self, credential_hash: str) -> bool:
        try:
            return await self._is_active(credential_hash)
        except Exception as failure:  # noqa: BLE001 - cannot decide: cut the tunnel
            logger.error("keybrake: cannot re-check a tunnel's proxy credential: %s", type(failure).__name__)
            return False

    async def _is_active(self, credential_hash: str) -> bool:
        if self.cache.fresh(credential_hash):
            return True
        active = await self._credential_active(credential_hash)
        if active:
            self.cache.remember(credential_hash)
        return active


def _is_forward(flow: http.HTTPFlow) -> bool:
    return isinstance(flow.client_conn.proxy_mode, mode_specs.RegularMode)
