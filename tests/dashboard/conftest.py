"""The dashboard served for real: uvicorn on a loopback port, and Debian's chromium driven by
Playwright (tests/support/browser.py: the browser, its pages and the screenshots)."""

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn
from starlette.applications import Starlette

from keybrake_addon.ledger.sqlite import SqliteLedger
from keybrake_addon.ledger.store import SqlLedger
from keybrake_addon.listener.dashboard import dashboard_routes

from support.browser import screenshot, watched_page

from .ledger_data import Facts, SettableClock, populate

__all__ = ["screenshot"]  # what the tests import from here (`browser` is tests/conftest.py's)


@dataclass
class Served:
    url: str  # http://127.0.0.1:PORT
    ledger: SqlLedger
    facts: Facts
    clock: SettableClock  # the ledger's: follow it when writing more


class ThreadedServer:
    """uvicorn on 127.0.0.1, on a port the OS picks, in a thread of this process."""

    def __init__(self, app) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    lifespan="off", access_log=False))
        self.thread = threading.Thread(target=self.server.run, name="dashboard-uvicorn", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def served(tmp_path) -> Iterator[Served]:
    clock = SettableClock()
    ledger = SqliteLedger(tmp_path / "keybrake.db", clock=clock)
    facts = populate(ledger, clock)
    app = Starlette(routes=dashboard_routes(ledger, refresh_seconds=1))
    with ThreadedServer(app) as url:
        yield Served(url, ledger, facts, clock)
    ledger.close()


@pytest.fixture
def page(browser, served):
    """A fresh browser profile at 1280 px; console errors (a CSP violation, a script error) fail the test."""
    with watched_page(browser, served.url) as opened:
        yield opened
