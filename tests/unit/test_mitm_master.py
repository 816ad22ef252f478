"""The mitmproxy master `keybrake proxy` runs: only the addons a vendor gate needs."""

import asyncio

from mitmproxy import options
from mitmproxy.proxy.server_hooks import ClientConnectedHook
from mitmproxy.test import tflow

from keybrake_addon.mitm_master import KeybrakeMaster


def _chain_names(master) -> list[str]:
    return [type(addon).__name__ for addon in master.addons.chain]


def test_the_chain_holds_what_the_gate_needs_and_nothing_for_interactive_interception():
    async def build():
        return _chain_names(KeybrakeMaster(options.Options(), with_termlog=False))

    names = asyncio.run(build())
    assert names == ["Core", "DisableH2C", "Proxyserver", "NextLayer", "TlsConfig", "UpdateAltSvc", "ErrorCheck"]
    # What stock mitmdump loads and a network service must not: flows saved to disk carry the real
    # secrets, onboarding answers anyone on mitm.it, map-local serves files from this host.
    for exposure in ("Save", "SaveHar", "Onboarding", "MapLocal", "MapRemote", "ScriptLoader", "ClientPlayback"):
        assert exposure not in names


def test_a_client_from_a_public_address_is_not_killed_by_mitmproxys_block_global():
    """Workers on Trigger.dev Cloud connect from public addresses; who may use the proxy is
    KeybrakeProxyAuth's decision. Stock mitmdump's Block addon kills such a connection."""

    async def connect_from(address: str):
        master = KeybrakeMaster(options.Options(), with_termlog=False)
        client = tflow.tclient_conn()
        client.peername = (address, 40000)
        await master.addons.trigger_event(ClientConnectedHook(client))
        return client.error

    assert asyncio.run(connect_from("8.8.8.8")) is None
    assert asyncio.run(connect_from("2001:4860:4860::8888")) is None
