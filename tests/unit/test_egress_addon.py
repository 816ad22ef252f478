"""The egress addon's hooks on mitmproxy test flows: one lookup, and the flow pinned to what was checked."""

import asyncio
import ipaddress

import pytest
from mitmproxy.test import taddons, tflow

from keybrake_addon import egress
from keybrake_addon.egress import Egress


@pytest.fixture
def lookups(monkeypatch):
    """A resolver that rebinds: the first answer is public, every later one is the metadata address."""
    asked = []

    async def rebinding(host, port):
        asked.append(host)
        return [ipaddress.ip_address("93.184.215.14" if len(asked) == 1 else "169.254.169.254")]

    monkeypatch.setattr(egress, "resolve", rebinding)
    return asked


def judged(hook: str, host: str, **options) -> tuple:
    addon = Egress()
    with taddons.context(addon) as context:
        context.configure(addon, **options)
        flow = tflow.tflow()
        flow.request.host, flow.request.port = host, 443
        flow.request.host_header = f"{host}:443"
        asyncio.run(getattr(addon, hook)(flow))
        return flow


@pytest.mark.parametrize("hook", ["http_connect", "request"])
def test_an_allowed_name_is_resolved_once_and_pinned(lookups, hook):
    flow = judged(hook, "api.example.com", keybrake_egress="allowlist", keybrake_egress_allow=["api.example.com"])
    assert flow.response is None
    assert lookups == ["api.example.com"]
    assert flow.request.host == "93.184.215.14"  # where mitmproxy connects: the address that was checked
    assert flow.request.host_header == "api.example.com:443"  # what the destination is told


@pytest.mark.parametrize("hook", ["http_connect", "request"])
def test_a_refused_name_is_answered_403_and_not_looked_up(lookups, hook):
    flow = judged(hook, "other.example.com", keybrake_egress="allowlist", keybrake_egress_allow=["api.example.com"])
    assert flow.response.status_code == 403
    assert lookups == []


def test_open_neither_looks_up_nor_pins(lookups):
    flow = judged("http_connect", "api.example.com", keybrake_egress="open")
    assert flow.response is None and lookups == [] and flow.request.host == "api.example.com"


@pytest.mark.parametrize("hook", ["http_connect", "request"])
def test_vendor_hosts_are_left_to_the_gate(lookups, hook):
    flow = judged(hook, "api.stripe.com", keybrake_egress="deny")
    assert flow.response is None and flow.request.host == "api.stripe.com"


def test_a_tunnel_is_judged_by_its_target_not_by_a_host_header_naming_a_vendor(lookups):
    addon = Egress()
    with taddons.context(addon) as context:
        context.configure(addon, keybrake_egress="deny")
        flow = tflow.tflow()
        flow.request.method, flow.request.host = "CONNECT", "internal.example.com"
        flow.request.headers["host"] = "api.stripe.com"
        asyncio.run(addon.http_connect(flow))
    assert flow.response.status_code == 403


def test_the_addon_refuses_everything_until_configured():
    assert not Egress().policy.check_name("api.example.com", 443).allowed


def test_a_bad_pattern_is_an_options_error():
    from mitmproxy.exceptions import OptionsError

    addon = Egress()
    with taddons.context(addon) as context, pytest.raises(OptionsError, match="egress policy"):
        context.configure(addon, keybrake_egress="allowlist", keybrake_egress_allow=["a.*.com"])
