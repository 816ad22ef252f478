"""The dashboard served for real: uvicorn on a loopback port, and Debian's chromium driven by Playwright.

No browser is ever downloaded (`playwright install` is never run): the tests launch the system's
`chromium` package (scripts/_deps.sh installs it), or the one KEYBRAKE_CHROMIUM names.
"""

import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette

from keybrake_addon.ledger.sqlite import SqliteLedger
from keybrake_addon.ledger.store import SqlLedger
from keybrake_addon.listener.dashboard import dashboard_routes

from .ledger_data import Facts, SettableClock, populate

CHROMIUM = os.environ.get("KEYBRAKE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@dataclass
class Served:
    url: str  # http://127.0.0.1:PORT
    ledger: SqlLedger
    facts: Facts


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
        yield Served(url, ledger, facts)
    ledger.close()


@pytest.fixture(scope="session")
def browser():
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        # Fail, never skip: a skipped browser test is a green run that proved nothing.
        pytest.fail(f"no chromium at {CHROMIUM}: install Debian's package (apt-get install -y chromium; "
                    "scripts/test does it) or set KEYBRAKE_CHROMIUM", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, served):
    """A fresh browser profile at 1280 px; console errors (a CSP violation, a script error) fail the test."""
    context = browser.new_context(viewport=DESKTOP, base_url=served.url, accept_downloads=True)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    # A page answering 401/403/404 on purpose logs "Failed to load resource"; anything else counts.
    assert not [e for e in errors if not e.startswith("Failed to load resource")], \
        f"the browser reported errors: {errors}"


def screenshot(page, name: str) -> None:
    """Saves the page at 1280 px and at phone width under test-artifacts/dashboard/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    page.screenshot(path=str(ARTIFACTS / f"{name}-desktop.png"), full_page=True)
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(150)  # the charts follow their box's new width
    page.screenshot(path=str(ARTIFACTS / f"{name}-phone.png"), full_page=True)
    page.set_viewport_size(size)
