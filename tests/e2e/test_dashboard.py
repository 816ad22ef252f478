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
from support.browser import screenshot, watched_page

from .helpers import keybrake, keybrake_json

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


def sign_in(page, token: str) -> None:
    page.goto("/ui/")
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    page.fill("#token", token)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/ui/$"))


def dollars(usd: str) -> str:
    """"62.50" as the CLI prints it, "$62.50" as the dashboard shows it."""
    return "$" + usd


def test_sign_in_see_a_runs_spend_revoke_its_key_and_export_the_audit(home, fake_stripe, tmp_path, browser,
                                                                     stripe_client_for_proxy):
    proxy = start_proxy(home, fake_stripe, tmp_path)
    try:
        token = keybrake_json(home, "admin-token", "create", "--name", "on-call")["token"]
        key = keybrake_json(home, "issue", "--vendor", "stripe", "--total-usd-cap", "100", "--label", LABEL,
                            "--allow", "POST /v1/payment_intents")
        # One worker through the forward proxy (HTTPS_PROXY and the CA bundle), one through the base-URL route.
        forward = stripe_client_for_proxy(proxy)(key["vault_key"])
        base_url = stripe.StripeClient(key["vault_key"], base_addresses={"api": proxy.api_url + "/stripe"},
                                       max_network_retries=0)
        intents = [forward.v1.payment_intents.create(params={**PI, "amount": 4250}),
                   base_url.v1.payment_intents.create(params={**PI, "amount": 1999}),
                   forward.v1.payment_intents.create(params={**PI, "amount": 1})]
        assert fake_stripe.money_moved_minor == 6250
        spent = keybrake_json(home, "keys", "show", key["key_id"])["spent_usd"]
        assert spent == "62.50"  # what the ledger says; the pages must say the same

        with watched_page(browser, proxy.api_url) as page:
            page.goto("/ui/login")
            screenshot(page, "e2e-01-sign-in")
            sign_in(page, token)
            expect(page.locator("[data-stat=today-spent]")).to_have_text(dollars(spent))
            expect(page.locator("[data-stat=month-spent]")).to_have_text(dollars(spent))
            expect(page.locator("[data-stat=active-keys]")).to_have_text("1")
            expect(page.locator("tr[data-vendor=stripe]")).to_contain_text(dollars(spent))
            expect(page.locator("[data-chart] canvas")).to_be_visible()
            screenshot(page, "e2e-02-overview")

            page.click("nav.nav >> text=Runs")
            expect(page.locator("tr.group")).to_contain_text(dollars(spent))
            screenshot(page, "e2e-03-runs")
            page.goto("/ui/run?label=" + LABEL)
            expect(page.locator("h1")).to_have_text(LABEL)
            expect(page.locator("[data-stat=run-spent]")).to_have_text(dollars(spent))
            for intent in intents:  # the vendor's object ids, as the ledger recorded them
                expect(page.locator("table.calls")).to_contain_text(intent.id)
            screenshot(page, "e2e-04-run")

            page.click(f"a.mono >> text={key['key_id']}")
            expect(page.locator("h1")).to_contain_text(key["key_id"])
            expect(page.locator("[data-stat=key-spent]")).to_have_text(dollars(spent))
            screenshot(page, "e2e-05-key")
            page.click("#revoke-key")
            page.click("#confirm-revoke-key")
            expect(page.locator(".flash-done")).to_contain_text("revoked")
            expect(page.locator("h1 .badge")).to_have_text("revoked")
            screenshot(page, "e2e-06-key-revoked")

            for client in (forward, base_url):  # the next SDK call is refused, Stripe-shaped, on both routes
                with pytest.raises(stripe.AuthenticationError) as refused:
                    client.v1.payment_intents.create(params={**PI, "amount": 500})
                assert refused.value.http_status == 401
                assert refused.value.json_body["error"]["code"] == "keybrake_key_revoked"
            assert fake_stripe.hits == 3

            page.click("nav.nav >> text=Audit")
            expect(page.locator("table.calls tbody tr")).to_have_count(5)
            screenshot(page, "e2e-07-audit")
            with page.expect_download() as download:
                page.click("#export-csv")
            exported = list(csv.reader(io.StringIO(download.value.path().read_text())))

            page.click("nav.nav >> text=Budgets")
            expect(page.locator(".empty h3")).to_have_text("No budgets yet")
            screenshot(page, "e2e-08-budgets-empty")

        cli = list(csv.reader(io.StringIO(keybrake(home, "audit", "--format", "csv", "--order", "newest").stdout)))
        assert exported == cli and len(exported) == 6  # the header and five calls, newest first
        columns = exported[0]
        decisions = [(row[columns.index("decision")], row[columns.index("object_id")]) for row in exported[1:]]
        assert decisions == [("keybrake_key_revoked", ""), ("keybrake_key_revoked", ""),
                             *(("allowed", intent.id) for intent in reversed(intents))]
    finally:
        proxy.stop()
    assert key["vault_key"] not in proxy.log_text() and token not in proxy.log_text()


def test_freeze_a_budget_from_its_page_and_the_next_call_under_it_is_refused(home, fake_stripe, tmp_path, browser):
    proxy = start_proxy(home, fake_stripe, tmp_path)
    try:
        token = keybrake_json(home, "admin-token", "create", "--name", "finance")["token"]
        keybrake_json(home, "budget", "create", "agents", "--total-usd-cap", "500")
        keybrake_json(home, "budget", "create", "billing", "--parent", "agents", "--daily-usd-cap", "100")
        keybrake_json(home, "budget", "create", "support", "--parent", "agents", "--total-usd-cap", "50")
        keybrake_json(home, "budget", "create", "refunds", "--parent", "support")
        key = keybrake_json(home, "issue", "--vendor", "stripe", "--budget", "billing", "--label", LABEL,
                            "--allow", "POST /v1/payment_intents")
        worker = stripe.StripeClient(key["vault_key"], base_addresses={"api": proxy.api_url + "/stripe"},
                                     max_network_retries=0)
        worker.v1.payment_intents.create(params={**PI, "amount": 7525})
        shown = keybrake_json(home, "budget", "show", "agents")
        assert (shown["spent_usd"], shown["remaining_usd"]) == ("75.25", "424.75")

        with watched_page(browser, proxy.api_url) as page:
            sign_in(page, token)
            page.click("nav.nav >> text=Budgets")
            rows = page.locator("tr[data-budget]")
            expect(rows).to_have_count(4)
            assert [row.get_attribute("data-budget") for row in rows.all()] == ["agents", "billing", "support",
                                                                                "refunds"]
            agents, billing = page.locator("tr[data-budget=agents]"), page.locator("tr[data-budget=billing]")
            expect(agents.locator("[data-figure=spent]")).to_have_text(dollars(shown["spent_usd"]))
            expect(agents.locator("td[data-label=left]")).to_have_text(dollars(shown["remaining_usd"]))
            expect(billing.locator("[data-figure=spent]")).to_have_text("$75.25")
            expect(billing.locator("td[data-label=left]")).to_have_text("$24.75")  # its daily cap binds first
            expect(billing.locator(".bar")).to_have_count(1)
            screenshot(page, "e2e-09-budgets")

            page.click("[data-freeze=agents]")
            screenshot(page, "e2e-10-budgets-confirm-freeze")
            page.click("[data-confirm-freeze=agents]")
            expect(page.locator(".flash-done")).to_contain_text("Budget agents is frozen")
            expect(agents.locator(".badge")).to_have_text("frozen")
            expect(billing.locator(".badge")).to_have_text("frozen by agents")
            expect(page.locator("[data-stat=frozen]")).to_have_text("1")
            screenshot(page, "e2e-11-budgets-frozen")

            with pytest.raises(stripe.AuthenticationError) as refused:
                worker.v1.payment_intents.create(params={**PI, "amount": 100})
            assert refused.value.json_body["error"]["code"] == "keybrake_budget_frozen"
            assert fake_stripe.hits == 1
            assert keybrake_json(home, "budget", "show", "billing")["frozen_by"] == "agents"

            page.click("[data-unfreeze=agents]")
            expect(page.locator(".flash-done")).to_contain_text("Budget agents is unfrozen")
            expect(agents.locator(".badge")).to_have_text("active")
            worker.v1.payment_intents.create(params={**PI, "amount": 100})  # decided from its caps again
            assert fake_stripe.hits == 2
    finally:
        proxy.stop()


def test_a_scoped_admin_token_sees_only_the_keys_it_minted(home, fake_stripe, tmp_path, browser):
    proxy = start_proxy(home, fake_stripe, tmp_path)
    try:
        scoped = keybrake_json(home, "admin-token", "create", "--name", "ci", "--vendor", "stripe")["token"]
        minted = httpx.post(proxy.api_url + "/vault/keys", headers={"authorization": f"Bearer {scoped}"}, timeout=10,
                            json={"vendor": "stripe", "total_usd_cap": 50, "agent_run_label": "team-a/run-1",
                                  "allowed_endpoints": ["POST /v1/payment_intents"]}).json()
        other = keybrake_json(home, "issue", "--vendor", "stripe", "--total-usd-cap", "50", "--allow",
                              "POST /v1/payment_intents", "--label", "team-b/run-1")
        for key in (minted, other):  # a call each, so both show in the audit trail
            paid = httpx.post(proxy.api_url + "/stripe/v1/payment_intents", data={"amount": 500, "currency": "usd"},
                              headers={"authorization": f"Bearer {key['vault_key']}"}, timeout=10)
            assert paid.status_code == 200
        with watched_page(browser, proxy.api_url) as page:
            sign_in(page, scoped)
            page.goto("/ui/runs")
            expect(page.locator("main")).to_contain_text("team-a")
            expect(page.locator("main")).not_to_contain_text("team-b")
            screenshot(page, "e2e-12-scoped-token-runs")
            page.goto(f"/ui/keys/{minted['key_id']}")
            expect(page.locator("main")).to_contain_text(minted["key_id"])
            answer = page.goto(f"/ui/keys/{other['key_id']}")
            assert answer.status == 404  # another token's key: not one it may see
            exported = page.request.get(proxy.api_url + "/ui/audit.csv")  # the session's cookie goes along
            assert exported.ok and minted["key_id"] in exported.text()
            assert other["key_id"] not in exported.text()
            page.goto("/ui/budgets")
            expect(page.locator("main")).not_to_contain_text("Freeze")
    finally:
        proxy.stop()
