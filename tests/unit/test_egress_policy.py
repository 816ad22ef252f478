"""The egress policy: patterns, address classes, verdicts (keybrake_addon/egress_policy.py), and the
resolver step of the egress addon that feeds it (keybrake_addon/egress.py)."""

import asyncio
import ipaddress
import socket

import pytest

from keybrake_addon.egress import resolve
from keybrake_addon.egress_policy import (EgressMode, EgressPolicy, HostPattern, default_mode, non_public_reason,
                                          parse_network, parse_pattern, shown)

ip = ipaddress.ip_address


# --- patterns ---------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern, host, port, expected", [
    ("api.trigger.dev", "api.trigger.dev", 443, True),
    ("api.trigger.dev", "API.Trigger.DEV", 443, True),
    ("api.trigger.dev", "api.trigger.dev.", 443, True),  # the fully qualified spelling is the same host
    ("api.trigger.dev.", "api.trigger.dev", 443, True),
    ("api.trigger.dev", "trigger.dev", 443, False),
    ("api.trigger.dev", "x.api.trigger.dev", 443, False),
    ("api.trigger.dev", "api.trigger.dev.evil.com", 443, False),
    ("*.example.com", "a.example.com", 443, True),
    ("*.example.com", "a.b.example.com", 443, True),
    ("*.example.com", "example.com", 443, False),  # subdomains only, not the apex
    ("*.example.com", "evilexample.com", 443, False),
    ("*.example.com", "example.com.evil.com", 443, False),
    ("*.example.com", "a.example.com.evil.com", 443, False),
    ("*.example.com", ".example.com", 443, False),
    ("*.example.com", "a.example.com.", 443, True),
    ("api.trigger.dev:443", "api.trigger.dev", 443, True),
    ("api.trigger.dev:443", "api.trigger.dev", 8443, False),
    ("*.example.com:8443", "a.example.com", 8443, True),
    ("*.example.com:8443", "a.example.com", 443, False),
    ("203.0.113.5", "203.0.113.5", 443, True),
    ("[2001:db8::1]:443", "2001:db8::1", 443, True),
    ("[2001:db8::1]:443", "[2001:db8::1]", 443, True),
    ("2001:db8::1", "2001:db8::1", 80, True),
])
def test_pattern_matching(pattern, host, port, expected):
    assert parse_pattern(pattern).matches(host, port) is expected


@pytest.mark.parametrize("pattern", [
    "", "*", "*.com", "a.*.com", "*example.com", "ex ample.com", "example.com:0", "example.com:65536",
    "example.com:http", "[::1]x", "-bad.example.com", "a" * 300, "exa/mple.com", "*.*.example.com",
])
def test_malformed_patterns_are_refused(pattern):
    with pytest.raises(ValueError):
        parse_pattern(pattern)


def test_a_pattern_is_stored_normalised():
    assert parse_pattern("API.Example.COM.:8443") == HostPattern("api.example.com", 8443)
    assert str(parse_pattern("*.Example.com")) == "*.example.com"


# --- addresses ---------------------------------------------------------------------------------

@pytest.mark.parametrize("address, reason", [
    ("169.254.169.254", "metadata"),
    ("fd00:ec2::254", "metadata"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped: judged as the IPv4 it carries
    ("::ffff:169.254.169.254", "metadata"),
    ("::ffff:10.1.2.3", "private"),
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.255", "carrier-grade NAT"),
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("fc00::1", "unique-local"),
    ("fdff::1", "unique-local"),
    ("0.0.0.0", "this network"),
    ("0.1.2.3", "this network"),
    ("::", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("255.255.255.255", "reserved"),
    ("::127.0.0.1", "IPv4-compatible"),
    ("64:ff9b::7f00:1", "NAT64"),
    ("2002:7f00:1::", "6to4"),
    ("2001:0:4136:e378::1", "Teredo"),
    ("192.0.2.1", "non-global"),  # documentation range
    ("198.18.0.1", "non-global"),  # benchmarking
])
def test_non_public_addresses_are_named(address, reason):
    assert reason in non_public_reason(ip(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "100.63.255.255", "100.128.0.0", "172.32.0.1",
                                     "2606:4700:4700::1111", "::ffff:8.8.8.8", "169.253.255.255"])
def test_public_addresses_pass(address):
    assert non_public_reason(ip(address)) is None


# --- verdicts ----------------------------------------------------------------------------------

def allowlist(*allow: str, private: tuple[str, ...] = ()) -> EgressPolicy:
    return EgressPolicy.parse("allowlist", allow, private)


def test_open_passes_every_name_and_address():
    policy = EgressPolicy.parse("open")
    assert policy.check_name("anything.internal", 22).allowed
    assert policy.check_address("anything.internal", ip("169.254.169.254")).allowed


def test_deny_refuses_every_name_even_one_on_the_allowlist():
    policy = EgressPolicy.parse("deny", ["api.trigger.dev"])
    verdict = policy.check_name("api.trigger.dev", 443)
    assert not verdict.allowed and "'deny'" in verdict.reason


def test_an_empty_allowlist_refuses_everything():
    verdict = allowlist().check_name("api.trigger.dev", 443)
    assert not verdict.allowed and "not on --egress-allow" in verdict.reason


def test_an_allowlisted_name_still_may_not_reach_a_private_address():
    policy = allowlist("metadata.example.com")
    assert policy.check_name("metadata.example.com", 80).allowed
    verdict = policy.check_address("metadata.example.com", ip("169.254.169.254"))
    assert not verdict.allowed
    assert "metadata" in verdict.reason and "169.254" not in verdict.reason  # no internal topology in answers


def test_allow_private_names_the_ranges_that_may_be_reached():
    policy = allowlist("localhost", private=("127.0.0.0/8",))
    assert policy.check_address("localhost", ip("127.0.0.1")).allowed
    assert policy.check_address("localhost", ip("::ffff:127.0.0.1")).allowed  # the same address, mapped
    assert not policy.check_address("localhost", ip("::1")).allowed  # another range
    assert not policy.check_address("localhost", ip("10.0.0.1")).allowed


def test_an_ipv6_range_can_be_allowed_for_a_mapped_address_too():
    policy = allowlist("x.example.com", private=("::ffff:10.0.0.0/104",))
    assert policy.check_address("x.example.com", ip("::ffff:10.0.0.7")).allowed


def test_the_first_address_that_passes_is_picked():
    policy = allowlist("dual.example.com")
    address, verdict = policy.pick_address("dual.example.com", [ip("10.0.0.1"), ip("93.184.215.14")])
    assert address == ip("93.184.215.14") and verdict.allowed
    address, verdict = policy.pick_address("dual.example.com", [ip("10.0.0.1"), ip("::1")])
    assert address is None and "private" in verdict.reason
    address, verdict = policy.pick_address("gone.example.com", [])
    assert address is None and "no address" in verdict.reason


def test_parse_refuses_an_unknown_mode_and_a_bad_range():
    with pytest.raises(ValueError, match="deny, allowlist, open"):
        EgressPolicy.parse("closed")
    with pytest.raises(ValueError, match="CIDR"):
        parse_network("10.0.0.0/33")
    assert parse_network("10.1.2.3/24") == ipaddress.ip_network("10.1.2.0/24")


@pytest.mark.parametrize("listen_host, mode", [
    ("127.0.0.1", EgressMode.OPEN), ("127.0.0.2", EgressMode.OPEN), ("::1", EgressMode.OPEN),
    ("localhost", EgressMode.OPEN), ("0.0.0.0", EgressMode.ALLOWLIST), ("", EgressMode.ALLOWLIST),
    ("::", EgressMode.ALLOWLIST), ("10.0.0.5", EgressMode.ALLOWLIST), ("proxy.internal", EgressMode.ALLOWLIST),
])
def test_the_default_mode_follows_the_listen_host(listen_host, mode):
    assert default_mode(listen_host) is mode


def test_a_host_is_bounded_and_printable_where_shown():
    assert shown("a" * 500).endswith("...") and len(shown("a" * 500)) < 100
    assert shown("evil\r\nX-Injected: 1") == "evil??X-Injected:?1"


# --- other spellings of an address: whatever the resolver makes of them is what gets judged ------

def resolver_reads(spelling: str) -> bool:
    try:
        socket.getaddrinfo(spelling, 80, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    return True


@pytest.mark.parametrize("spelling", ["2130706433", "0177.0.0.1", "0x7f.0.0.1", "127.1", "localhost",
                                      "::ffff:127.0.0.1"])
def test_odd_spellings_of_loopback_are_refused_by_address(spelling):
    if not resolver_reads(spelling):
        pytest.skip(f"this resolver does not read {spelling!r}: it cannot be used to get around the policy")
    addresses = asyncio.run(resolve(spelling, 80))
    assert addresses and all(non_public_reason(a) for a in addresses)
    address, verdict = allowlist().pick_address(spelling, addresses)
    assert address is None and "loopback" in verdict.reason


def test_a_name_that_does_not_resolve_gives_no_address():
    assert asyncio.run(resolve("no-such-host.invalid", 443)) == []
