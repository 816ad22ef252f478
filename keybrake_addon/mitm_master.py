"""The mitmproxy master Keybrake runs: only the mitmproxy addons a vendor gate needs.

mitmproxy calls every addon in its chain for every event of every flow (a dozen events a call),
whether or not the addon has a hook for it. Stock `mitmdump` loads about 35 addons, most of them
for interactive interception: replay, map-local, cookie stickiness, saving flows to disk, the
mitm.it onboarding app. Keybrake uses none of them, and some are exposures on a network service
(saving flows writes vendor secrets to disk; onboarding answers any client on mitm.it).

Left out on purpose:
- `Block`: its `block_global` kills every client connection from a public address, which is
  exactly where Trigger.dev Cloud workers come from. Who may use the forward proxy is
  KeybrakeProxyAuth's decision (proxy credentials, and refusing an open proxy on a non-loopback
  listener unless told).
- mitmproxy's `ProxyAuth`: KeybrakeProxyAuth replaces it.
- `ScriptLoader`: Keybrake loads no scripts; `-s` is not one of its options.
"""

from mitmproxy import options
from mitmproxy.addons import core, disable_h2c, errorcheck, next_layer, proxyserver, tlsconfig, update_alt_svc
from mitmproxy.master import Master

# Each with the reason it stays.
KEPT_MITMPROXY_ADDONS = (
    core.Core,  # the core options and their validation
    disable_h2c.DisableH2C,  # refuses h2c upgrades and prior-knowledge h2 a regular-mode proxy cannot handle
    proxyserver.Proxyserver,  # the listeners
    next_layer.NextLayer,  # decides TLS, HTTP or a raw tunnel for each connection
    tlsconfig.TlsConfig,  # the CA, certificates minted per host, the API listener's own certificate
    update_alt_svc.UpdateAltSvc,  # a vendor's Alt-Svc through the base-URL routes names this listener's port
)


class KeybrakeMaster(Master):
    def __init__(self, opts: options.Options, *, with_termlog: bool) -> None:
        super().__init__(opts, with_termlog=with_termlog)
        self.addons.add(*(addon() for addon in KEPT_MITMPROXY_ADDONS))
        # As in mitmdump: an error logged while the addons start makes the process exit.
        self.addons.add(errorcheck.ErrorCheck())
