"""The dashboard on a real `keybrake proxy` process, in Debian's chromium (Playwright).

Workers make real stripe-python calls through the proxy to the fake Stripe; an operator signs
in at /ui/ with an admin token made by `keybrake admin-token create`, sees the run's spend as the
ledger counts it, revokes the key (the next SDK call is refused), freezes a budget (the same),
and exports the audit trail, which must match `keybrake audit --format csv`. Every page is saved
under test-artifacts/dashboard/ as e2e-*.png.
"""

import csv
import io
import re
import sqlite3
import time

import httpx
import pytest
import stripe
from playwright.sync_api import expect

from keybrake_addon.proxy_process import ProxyProcess
from support.browser import browser, screenshot, watched_page

from .helpers import keybrake, keybrake_json

__all__ = ["browser"]  # the session's chromium, as a fixture

LABEL = "trigger.dev/billing-agent/run_42"
PI = {"currency": "usd", "confirm": True, "payment_method": "pm_card_visa"}


def start_proxy(home, fake_stripe, tmp_path, *extra_args: str) -> ProxyProcess:
    return ProxyProcess(home=home, upstreams=(f"stripe={fake_stripe.url}",), log_path=tmp_path / "proxy.log",
                        extra_args=("--api-port", "0", *extra_args)).start()


def test_the_dashboard_answers_503_until_the_ledger_opens_then_mounts_by_itself(home, fake_stripe, tmp_path):
    blocker = sqlite3.connect(home / "keybrake.db", isolation_level=None)
    proxy = None
    try:
        blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the lock as the proxy starts
        proxy = start_proxy(home, fake_stripe, tmp_path, "--db-busy-timeout", "0.2")
        assert "cannot open the ledger yet" in proxy.log_text()
        waiting = httpx.get(proxy.api_url + "/ui/", timeout=10)
        assert (waiting.status_code, waiting.headers["retry-after"]) == (503, "2")
        assert waiting.headers["content-type"].startswith("text/plain")
        assert "cannot open its ledger yet" in waiting.text
        blocker.execute("ROLLBACK")  # the trouble ends: the dashboard must follow without a restart
        deadline = time.monotonic() + 10
        while (answer := httpx.get(proxy.api_url + "/ui/", timeout=10)).status_code == 503:
            assert time.monotonic() < deadline, "/ui/ stayed 503 after the ledger could be opened"
            time.sleep(0.3)
        assert (answer.status_code, answer.headers["location"]) == (303, "/ui/login?next=%2Fui%2F")
    finally:
        blocker.close()
        if proxy is not None:
            proxy.stop()
