"""Debian's chromium driven by Playwright, shared by the dashboard tests and the end-to-end ones.

No browser is ever downloaded (`playwright install` is never run): the tests launch the system's
`chromium` package (scripts/_deps.sh installs it), or the one KEYBRAKE_CHROMIUM names.
Screenshots go to test-artifacts/dashboard/, at 1280 px and at phone width.
"""

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("KEYBRAKE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-proxy-server"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser():
    # Per module, never per session: Playwright's sync API keeps an event loop running in this
    # thread while it is open, and every later test's asyncio.run() would fail on it.
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        # Fail, never skip: a skipped browser test is a green run that proved nothing.
        pytest.fail(f"no chromium at {CHROMIUM}: install Debian's package (apt-get install -y chromium; "
                    "scripts/test does it) or set KEYBRAKE_CHROMIUM", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


@contextmanager
def watched_page(browser, base_url: str) -> Iterator:
    """A fresh browser profile at 1280 px; console errors (a CSP violation, a script error) fail the test."""
    context = browser.new_context(viewport=DESKTOP, base_url=base_url, accept_downloads=True)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    opened.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield opened
    finally:
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
