"""Egress policy for the hosts Keybrake does not front: pure data and decisions, no I/O.

Modelled on stripe/smokescreen: a destination passes by name (the allowlist), then by address
(never a private, loopback, link-local or metadata address unless an operator range names it).
The caller resolves the name once, asks about each address, and connects to the one that passed.

- `deny`: every non-vendor destination is refused.
- `allowlist`: only names matching `--egress-allow`, and only to public addresses.
- `open`: everything passes (a worker on the same machine could reach it all anyway).
"""

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class EgressMode(StrEnum):
    DENY = "deny"
    ALLOWLIST = "allowlist"
    OPEN = "open"


def default_mode(listen_host: str) -> EgressMode:
    """`open` for a forward listener only this machine reaches; `allowlist` (empty: deny) otherwise."""
    if listen_host.lower().rstrip(".") == "localhost":
        return EgressMode.OPEN
    try:
        loopback = ipaddress.ip_address(listen_host).is_loopback
    except ValueError:  # a name other than localhost, or "" (every interface)
        loopback = False
    return EgressMode.OPEN if loopback else EgressMode.ALLOWLIST


# Names of addresses a worker must not reach through the proxy, most specific first: the first
# match is the reason given. Anything else that Python does not call global is refused too.
_NON_PUBLIC: tuple[tuple[str, str], ...] = (
    ("169.254.169.254/32", "a cloud metadata address"),
    ("fd00:ec2::254/128", "a cloud metadata address"),
    ("0.0.0.0/8", "a 'this network' address"),
    ("127.0.0.0/8", "a loopback address"),
    ("10.0.0.0/8", "a private address"),
    ("172.16.0.0/12", "a private address"),
    ("192.168.0.0/16", "a private address"),
    ("100.64.0.0/10", "a carrier-grade NAT address"),
    ("169.254.0.0/16", "a link-local address"),
    ("224.0.0.0/4", "a multicast address"),
    ("240.0.0.0/4", "a reserved address"),
    ("::1/128", "a loopback address"),
    ("::/128", "the unspecified address"),
    ("fc00::/7", "a unique-local (private) address"),
    ("fe80::/10", "a link-local address"),
    ("ff00::/8", "a multicast address"),
    # IPv6 that carries an IPv4 address: a way around the IPv4 rules above (smokescreen refuses these too).
    ("::/96", "an IPv4-compatible IPv6 address"),
    ("64:ff9b::/96", "a NAT64 address"),
    ("64:ff9b:1::/48", "a NAT64 address"),
    ("2002::/16", "a 6to4 address"),
    ("2001::/32", "a Teredo address"),
)
NON_PUBLIC_RANGES: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(cidr), why) for cidr, why in _NON_PUBLIC)

_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
MAX_PATTERN_CHARS = 260
MAX_LOGGED_HOST_CHARS = 80


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str  # for the log and the 403: never an address the destination resolved to


@dataclass(frozen=True)
class HostPattern:
    """`api.trigger.dev`, `*.example.com` (subdomains only, any depth), optionally `:port`."""

    host: str  # normalised; a wildcard keeps its leading "*."
    port: int | None = None

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        name = normalise_host(host)
        if self.host.startswith("*."):
            return name.endswith(self.host[1:]) and len(name) > len(self.host) - 1
        return name == self.host

    def __str__(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


def normalise_host(host: str) -> str:
    """Lower case, without brackets or one trailing dot: `API.Example.com.` is `api.example.com`."""
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    return name[:-1] if name.endswith(".") else name


def parse_pattern(text: str) -> HostPattern:
    """One `--egress-allow` entry; ValueError says what is wrong with it."""
    if not text or len(text) > MAX_PATTERN_CHARS:
        raise ValueError(f"expected HOST, *.DOMAIN or either with :PORT, got {text[:MAX_PATTERN_CHARS]!r}")
    host, port = _split_port(text.strip())
    name = normalise_host(host)
    if _ip_literal(name) is not None:
        return HostPattern(str(_ip_literal(name)), port)
    wildcard = name.startswith("*.")
    labels = (name[2:] if wildcard else name).split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{text!r} is not a host name (a wildcard is only allowed as a leading '*.')")
    if wildcard and len(labels) < 2:
        raise ValueError(f"{text!r} would allow a whole top-level domain: name at least two labels after '*.'")
    return HostPattern(name, port)


def _split_port(text: str) -> tuple[str, int | None]:
    if text.startswith("["):  # [v6]:port or [v6]
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":") if rest else None
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected [IPV6] or [IPV6]:PORT")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:  # a name, or a bare IPv6 literal
        host, port_text = text, None
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def parse_network(text: str) -> IPNetwork:
    """One `--egress-allow-private` entry: a CIDR (or one address)."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"expected a CIDR such as 10.1.2.0/24 or fd00:ec2::254/128, got {text[:60]!r}") from None


def _ip_literal(host: str) -> IPAddress | None:
    """The address a host names by itself, in its one strict spelling (others go to the resolver)."""
    try:
        return ipaddress.ip_address(normalise_host(host))
    except ValueError:
        return None


def unmapped(address: IPAddress) -> IPAddress:
    """`::ffff:127.0.0.1` is 127.0.0.1: judged, and matched against ranges, as the IPv4 it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def non_public_reason(address: IPAddress) -> str | None:
    """Why a worker must not reach this address, or None for a public one."""
    address = unmapped(address)
    for network, why in NON_PUBLIC_RANGES:
        if address.version == network.version and address in network:
            return why
    if not address.is_global:  # documentation, benchmarking, and whatever IANA reserves next
        return "a non-global address"
    return None


@dataclass(frozen=True)
class EgressPolicy:
    mode: EgressMode
    allowed: tuple[HostPattern, ...] = ()
    private_allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, mode: str, allow: Sequence[str] = (), allow_private: Sequence[str] = ()) -> "EgressPolicy":
        try:
            parsed_mode = EgressMode(mode)
        except ValueError:
            raise ValueError(f"egress mode must be one of {', '.join(EgressMode)}, got {mode[:20]!r}") from None
        return cls(parsed_mode, tuple(map(parse_pattern, allow)), tuple(map(parse_network, allow_private)))

    @property
    def checks_addresses(self) -> bool:
        return self.mode is EgressMode.ALLOWLIST

    def check_name(self, host: str, port: int) -> Verdict:
        """The first question, before any lookup: may this name be reached at all?"""
        if self.mode is EgressMode.OPEN:
            return Verdict(True, "egress policy 'open'")
        if self.mode is EgressMode.DENY:
            return Verdict(False, "egress policy 'deny' refuses every host Keybrake does not front")
        if not any(pattern.matches(host, port) for pattern in self.allowed):
            return Verdict(False, f"egress policy 'allowlist': {shown(host)}:{port} is not on --egress-allow")
        return Verdict(True, "on --egress-allow")

    def check_address(self, host: str, address: IPAddress) -> Verdict:
        """The second question, for each address the name resolved to."""
        if not self.checks_addresses:
            return Verdict(True, f"egress policy '{self.mode}'")
        why = non_public_reason(address)
        if why is None:
            return Verdict(True, "a public address")
        if self._private_allowed(address):
            return Verdict(True, "on --egress-allow-private")
        return Verdict(False, f"egress policy 'allowlist': {shown(host)} resolves to {why}, "
                              "which --egress-allow-private does not name")

    def pick_address(self, host: str, addresses: Iterable[IPAddress]) -> tuple[IPAddress | None, Verdict]:
        """The first address that passes (the one to connect to), or None and why the first failed."""
        first_refusal = None
        for address in addresses:
            verdict = self.check_address(host, address)
            if verdict.allowed:
                return address, verdict
            first_refusal = first_refusal or verdict
        return None, first_refusal or Verdict(False, f"egress policy: {shown(host)} resolves to no address")

    def _private_allowed(self, address: IPAddress) -> bool:
        candidates = {address, unmapped(address)}
        return any(a.version == net.version and a in net for net in self.private_allowed for a in candidates)


def shown(host: str) -> str:
    """A host as it may appear in a log line or an answer: bounded and printable."""
    printable = "".join(c if c.isprintable() and not c.isspace() else "?" for c in host[:MAX_LOGGED_HOST_CHARS])
    return printable + ("..." if len(host) > MAX_LOGGED_HOST_CHARS else "")
