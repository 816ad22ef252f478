"""Run mitmproxy in forward mode with the Keybrake addon and the home's CA."""

import asyncio
import re
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from mitmproxy import ctx, options
from mitmproxy.tools.dump import DumpMaster

from .addon import Keybrake
from .home import KeybrakeHome
from .vendors import VENDOR_HOSTS


@dataclass(frozen=True)
class ProxySettings:
    home: KeybrakeHome
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    upstreams: Sequence[str] = ()
    strict_egress: bool = False
    db_busy_timeout_s: float = 5.0
    quiet: bool = False
    on_listening: list = field(default_factory=list)


def intercept_patterns() -> list[str]:
    """mitmproxy intercepts only hosts matching these; every other CONNECT is a blind tunnel."""
    return [rf"^{re.escape(host)}(:\d+)?$" for host in VENDOR_HOSTS]


class _ReadyLine:
    """Prints where the proxy listens once its sockets are bound (the port may have been 0)."""

    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings

    def running(self) -> None:
        addresses = ctx.master.addons.get("proxyserver").listen_addrs()
        host, port = addresses[0][0], addresses[0][1]
        for callback in self.settings.on_listening:
            callback(host, port)


async def run_proxy(settings: ProxySettings) -> None:
    master = DumpMaster(options.Options(), with_termlog=not settings.quiet, with_dumper=False)
    master.addons.add(Keybrake(), _ReadyLine(settings))
    # Options of mitmproxy's own addons exist only once the master has loaded them.
    master.options.update(
        listen_host=settings.listen_host,
        listen_port=settings.listen_port,
        confdir=str(settings.home.mitmproxy_confdir),
        mode=["regular"],
        connection_strategy="lazy",
        allow_hosts=intercept_patterns(),
        termlog_verbosity="warn",
        keybrake_home=str(settings.home.root),
        keybrake_upstreams=list(settings.upstreams),
        keybrake_strict_egress=settings.strict_egress,
        keybrake_db_busy_timeout=settings.db_busy_timeout_s,
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, master.shutdown)
    await master.run()


def serve(settings: ProxySettings) -> None:
    try:
        asyncio.run(run_proxy(settings))
    except KeyboardInterrupt:
        sys.exit(130)
