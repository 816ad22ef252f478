"""The dashboard in a real browser (Debian's chromium, headless), against a real ledger.

Each page is also saved as a screenshot (1280 px and phone width) under test-artifacts/dashboard/.
"""

import csv
import io
import re

import httpx
from playwright.sync_api import expect

from keybrake_addon.ledger.dashboard_reads import AuditQuery, DashboardReads, ReadScope
from keybrake_addon.listener.dashboard.audit_filters import CSV_COLUMNS
from keybrake_addon.listener.dashboard.formatting import cents

from .conftest import screenshot
from .ledger_data import USD, Writer


def sign_in(page, token: str) -> None:
    page.goto("/ui/")
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    page.fill("#token", token)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/ui/$"))


def test_sign_in_with_an_admin_token_and_see_the_overview(page, served):
    page.goto("/ui/login")
    screenshot(page, "01-sign-in")
    page.fill("#token", "kba_not-a-token")
    page.click("button[type=submit]")
    expect(page.locator(".flash-error")).to_contain_text("not an active admin token")
    sign_in(page, served.facts.admin_token)
    cookie = next(c for c in page.context.cookies() if c["name"] == "keybrake_session")
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"], cookie["secure"]) == (True, "Strict", "/ui", False)

    facts = served.facts
    today = DashboardReads(served.ledger).overview(ReadScope.everything())
    expect(page.locator("[data-stat=today-spent]")).to_have_text(cents(sum(v.today_spent for v in today.vendors)))
    expect(page.locator("[data-stat=cap-hits]")).to_have_text("1")
    expect(page.locator("[data-stat=near-cap]")).to_have_text("1")
    expect(page.locator("[data-stat=unknown]")).to_have_text("1")
    expect(page.locator(".near-list")).to_contain_text(facts.near_cap_key)
    expect(page.locator("[data-chart] canvas")).to_be_visible()  # uPlot drew the week's spend
    screenshot(page, "02-overview")


def test_runs_roll_up_under_their_prefix_and_a_run_shows_its_spend(page, served):
    facts = served.facts
    sign_in(page, facts.admin_token)
    page.click("nav.nav >> text=Runs")
    screenshot(page, "03-runs")
    page.click("a.group-link >> text=trigger.dev/")
    group = page.locator("tr.group", has_text="billing-agent/")
    billing_total = sum(facts.spent_by_label[label] for label in facts.billing_runs)
    expect(group).to_contain_text(cents(billing_total))
    expect(group).to_contain_text("4 runs")
    group.locator("a").click()
    screenshot(page, "04-runs-billing-agent")
    label = facts.billing_runs[-1]
    page.click(f"a.label-text >> text={label.rsplit('/', 1)[1]}")
    expect(page.locator("h1")).to_have_text(label)
    expect(page.locator("[data-stat=run-spent]")).to_have_text(cents(facts.spent_by_label[label]))
    expect(page.locator("[data-chart] canvas")).to_be_visible()
    screenshot(page, "05-run")


def test_revoke_from_the_key_page_marks_the_key_revoked_in_the_ledger(page, served):
    facts = served.facts
    sign_in(page, facts.admin_token)
    page.goto(f"/ui/keys/{facts.near_cap_key}")
    expect(page.locator("[data-stat=key-spent]")).to_have_text(cents(45_000_000))
    expect(page.locator("table.calls")).to_contain_text("cap exceeded")
    screenshot(page, "06-key")

    page.goto(f"/ui/keys/{facts.revocable_key}")
    page.click("#revoke-key")
    page.click("#confirm-revoke-key")
    expect(page.locator(".flash-done")).to_contain_text("revoked")
    expect(page.locator("h1 .badge")).to_have_text("revoked")
    assert served.ledger.get_key(facts.revocable_key).revoked_at is not None

    page.goto(f"/ui/keys/{facts.unknown_key}")  # unknown reservation listed; revoke the whole run
    expect(page.locator("td .badge-unknown")).to_have_count(2)  # the hold, and the call whose answer was lost
    page.click("#revoke-run")
    page.click("#confirm-revoke-run")
    expect(page.locator(".flash-done")).to_contain_text("run is revoked (1 key)")
    assert served.ledger.get_key(facts.unknown_key).revoked_at is not None


def test_audit_filters_paginate_and_the_csv_export_matches_the_ledger(page, served):
    sign_in(page, served.facts.admin_token)
    page.click("nav.nav >> text=Audit")
    expect(page.locator("table.calls tbody tr")).to_have_count(50)
    screenshot(page, "07-audit")
    page.click("#older")
    expect(page.locator("table.calls tbody tr")).to_have_count(served.facts.audit_rows - 50)

    page.goto("/ui/audit")
    page.select_option("select[name=vendor]", "stripe")
    page.select_option("select[name=decision]", "cap_hit")
    page.click("button:has-text('Filter')")
    expect(page.locator("table.calls tbody tr")).to_have_count(1)
    with page.expect_download() as download_info:
        page.click("#export-csv")
    exported = list(csv.reader(io.StringIO(download_info.value.path().read_text())))
    assert exported[0] == CSV_COLUMNS
    assert [row[CSV_COLUMNS.index("decision")] for row in exported[1:]] == ["keybrake_cap_exceeded"]

    page.goto("/ui/audit")
    with page.expect_download() as download_info:
        page.click("#export-csv")
    exported = list(csv.DictReader(io.StringIO(download_info.value.path().read_text())))
    ledger_rows = [row for chunk in DashboardReads(served.ledger).audit_export(ReadScope.everything(), AuditQuery())
                   for row in chunk]
    assert len(exported) == served.facts.audit_rows == len(ledger_rows)
    assert [(r["ts"], r["key_id"], r["decision"], r["object_id"]) for r in exported] == \
        [(r["ts"], r["key_id"], r["decision"], r["object_id"] or "") for r in ledger_rows]


def test_a_form_without_its_csrf_token_is_refused(page, served):
    facts = served.facts
    sign_in(page, facts.admin_token)
    page.goto(f"/ui/keys/{facts.revocable_key}")
    page.click("#revoke-key")
    page.evaluate("document.querySelector('form.confirm input[name=csrf]').remove()")
    page.click("#confirm-revoke-key")
    expect(page.locator("h3")).to_have_text("That did not go through")
    assert served.ledger.get_key(facts.revocable_key).revoked_at is None


def test_sign_out_ends_the_session_even_for_a_copied_cookie(page, served):
    sign_in(page, served.facts.admin_token)
    cookie = next(c for c in page.context.cookies() if c["name"] == "keybrake_session")
    with httpx.Client(base_url=served.url, cookies={"keybrake_session": cookie["value"]}) as copied:
        assert copied.get("/ui/runs").status_code == 200
        page.click("#sign-out")
        expect(page.locator(".flash")).to_have_text("You are signed out.")
        assert copied.get("/ui/runs").status_code == 303  # to the sign-in page: the session is gone
    page.goto("/ui/runs")
    expect(page).to_have_url(re.compile(r"/ui/login"))


def test_a_page_refreshes_its_figures_by_itself(page, served):
    """The overview polls its live part: new spend shows without a reload."""
    sign_in(page, served.facts.admin_token)
    page.evaluate("window.sameDocument = true")
    before = served.facts.spent_by_label.copy()
    write = Writer(served.ledger, served.clock, served.facts, key_prefix="kbk_live")
    _, key_hash = write.key("stripe", "live/run_1", total=500 * USD)
    assert write.call(key_hash, "stripe", 250 * USD, label="live/run_1")
    today = DashboardReads(served.ledger).overview(ReadScope.everything())
    expect(page.locator("[data-stat=today-spent]")).to_have_text(cents(sum(v.today_spent for v in today.vendors)))
    assert page.evaluate("window.sameDocument") is True
    assert served.facts.spent_by_label["live/run_1"] == 250 * USD and "live/run_1" not in before
