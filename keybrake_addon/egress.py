"""The egress addon: applies the egress policy to every destination Keybrake does not front.

A CONNECT (tunnel) is judged in `http_connect`, a plain-HTTP proxy request (no CONNECT) in
`request`. The vendor hosts are never judged here: they are intercepted and gated instead.
In `allowlist` mode the name is resolved once, here, and the flow is pinned to the address that
was checked, so a second lookup (DNS rebinding) cannot send the connection somewhere else.
"""

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Sequence

from mitmproxy import ctx, exceptions, http
from mitmproxy.proxy import mode_specs

from .egress_policy import EgressMode, EgressPolicy, IPAddress, Verdict, shown
from .keyless_refusals import LogBudget
from .proxy_auth import without_body
from .vendors import vendor_for_host
from .vendors.base import RefusalKind

logger = logging.getLogger("keybrake")

RESOLVE_TIMEOUT_S = 5.0
_REFUSAL_LOG = LogBudget()  # with --insecure-open-proxy, anyone's request can be refused: bounded a minute


class Egress:
    def __init__(self) -> None:
        self.policy = EgressPolicy(EgressMode.ALLOWLIST)  # until configured: an empty allowlist, so deny

    def load(self, loader) -> None:
        loader.add_option("keybrake_egress", str, EgressMode.ALLOWLIST.value,
                          "What to do with a host Keybrake does not front: deny, allowlist or open.",
                          choices=[mode.value for mode in EgressMode])
        loader.add_option("keybrake_egress_allow", Sequence[str], [],
                          "In allowlist mode, hosts that may be tunnelled: NAME, *.DOMAIN, either with :PORT.")
        loader.add_option("keybrake_egress_allow_private", Sequence[str], [],
                          "In allowlist mode, CIDRs of private, loopback or link-local addresses that may be reached.")

    def configure(self, updated) -> None:
        if updated & {"keybrake_egress", "keybrake_egress_allow", "keybrake_egress_allow_private"}:
            try:
                self.policy = EgressPolicy.parse(ctx.options.keybrake_egress, ctx.options.keybrake_egress_allow,
                                                 ctx.options.keybrake_egress_allow_private)
            except ValueError as error:
                raise exceptions.OptionsError(f"egress policy: {error}") from None

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        # By the CONNECT target only: a Host header naming a vendor does not make a tunnel go there.
        if vendor_for_host(flow.request.host) is None:
            await self._judge(flow)

    async def request(self, flow: http.HTTPFlow) -> None:
        """Plain-HTTP proxying needs no CONNECT: the same policy, before anything is sent on."""
        if flow.response is not None or isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode):
            return
        if not _fronted(flow):
            await self._judge(flow)

    async def _judge(self, flow: http.HTTPFlow) -> None:
        host, port = flow.request.host, flow.request.port
        verdict = self.policy.check_name(host, port)
        if verdict.allowed and self.policy.checks_addresses:
            address, verdict = self.policy.pick_address(host, await resolve(host, port))
            if address is not None:
                pin(flow, address)
        if not verdict.allowed:
            refuse(flow, verdict)


def _fronted(flow: http.HTTPFlow) -> bool:
    """A vendor host, by target or Host header: the Keybrake addon gates it and re-targets it at the vendor."""
    candidates = {flow.request.host, flow.request.pretty_host}
    return any(vendor_for_host(name) is not None for name in candidates if name)


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the resolver gives for host, off the event loop; none if the lookup fails."""
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError, UnicodeError):
        return []
    # An IPv6 scope ("fe80::1%eth0") is dropped: the range checks judge the address itself.
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].partition("%")[0]) for info in infos))


def pin(flow: http.HTTPFlow, address: IPAddress) -> None:
    """Connect to the address that was checked; the Host header (and a tunnel's own TLS) keep the name."""
    host_header = flow.request.host_header
    flow.request.host = str(address)  # for a CONNECT, mitmproxy takes the tunnel's address from here
    flow.request.host_header = host_header


def refuse(flow: http.HTTPFlow, verdict: Verdict) -> None:
    """One bounded log line and a 403 naming the policy; never the resolved address (internal topology)."""
    _REFUSAL_LOG.log(logger, logging.WARNING, "keybrake: egress refused: %s %s:%d: %s", flow.request.method[:10],
                     shown(flow.request.host), flow.request.port, verdict.reason)
    text = f"Keybrake refused this destination: {verdict.reason}."
    if flow.request.method == "CONNECT":  # no body: Node proxy agents would hang on one (proxy_auth.without_body)
        flow.response = without_body(403, text, {"x-keybrake-refusal": RefusalKind.EGRESS_DENIED.code})
        return
    flow.response = http.Response.make(403, text + "\n", {"content-type": "text/plain",
                                                          "x-keybrake-refusal": RefusalKind.EGRESS_DENIED.code})
