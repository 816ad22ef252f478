"""The Budgets page over HTTP, on each ledger backend: the tree with its figures, and Freeze /
Unfreeze as CSRF-protected forms whose effect the ledger's own admit shows."""

import dataclasses
import re
from contextlib import ExitStack

import pytest

from keybrake_addon.api.tokens import AdminTokens
from keybrake_addon.ledger.base import AdmitRequest, CallFacts
from keybrake_addon.ledger.dashboard_reads import ReadScope
from keybrake_addon.ledger.postgres import PostgresLedger
from keybrake_addon.ledger.sqlite import SqliteLedger
from keybrake_addon.ledger.times import utc_now
from keybrake_addon.vendors.base import CostEstimate, RefusalKind

from .http_forms import client, form_csrf, signed_in
from .ledger_data import USD, SettableClock, Facts, Writer, spec

BOTH_BACKENDS = True
ORIGIN = {"origin": "http://testserver"}


@pytest.fixture
def ledger(ledger_backend, tmp_path, request):
    with ExitStack() as stack:
        if ledger_backend == "sqlite":
            opened = SqliteLedger(tmp_path / "keybrake.db")
        else:
            opened = PostgresLedger(request.getfixturevalue("pg_url"), where="test")
        stack.callback(opened.close)
        opened.put_secret("stripe", "default", b"n" * 12, b"sealed", "fp", None)
        yield opened


@pytest.fixture
def budgets(ledger):
    """org ($100 total) with billing ($30 a day) and support under it; one key in billing, $20 spent."""
    ledger.create_budget("org", parent=None, daily_cap_micros=None, total_cap_micros=100 * USD)
    ledger.create_budget("support", parent="org", daily_cap_micros=None, total_cap_micros=None)
    ledger.create_budget("billing", parent="org", daily_cap_micros=30 * USD, total_cap_micros=None)
    ledger.create_key("kbk_billing", "hash-billing", dataclasses.replace(spec("stripe", "run/1"), budget="billing"))
    write = Writer(ledger, SettableClock(), Facts())
    assert write.call("hash-billing", "stripe", 20 * USD)
    return ledger


def admit(ledger, key_hash: str = "hash-billing"):
    call = CallFacts("stripe", "POST", "/v1/payment_intents", None, utc_now())
    return ledger.admit(AdmitRequest(key_hash, call, CostEstimate(usd_micros=USD)))


def rows(html: str) -> dict[str, str]:
    """Each budget's table row, by name, in the page's order."""
    return {m[1]: m[2] for m in re.finditer(r'<tr id="budget-([^"]+)"(.*?)</tr>', html, re.S)}


def browser_for(ledger, **options):
    _, token = AdminTokens(ledger).create("ops")
    return signed_in(client(ledger, **options), token)


def test_without_budgets_the_page_says_how_to_make_one(ledger):
    page = browser_for(ledger).get("/ui/budgets")
    assert page.status_code == 200 and "No budgets yet" in page.text
    assert "keybrake budget create" in page.text and 'aria-current="page">Budgets' in page.text


def test_the_tree_shows_each_budget_under_its_parent_with_spend_against_its_caps(budgets):
    page = browser_for(budgets).get("/ui/budgets")
    shown = rows(page.text)
    assert list(shown) == ["org", "billing", "support"]  # depth first, children in name order
    assert all(f'class="tree depth-{d}"' in shown[n] for n, d in (("org", 0), ("billing", 1), ("support", 1)))
    assert "$20.00</strong> <span class=\"muted\">of $100.00</span>" in shown["org"]
    assert 'aria-label="20% of the cap"' in shown["org"]
    assert "of $30.00 a day" in shown["billing"] and 'aria-label="67% of the cap"' in shown["billing"]
    assert "no total cap" in shown["support"] and "no keys yet" in shown["support"]
    assert "1 key (1 active)" in shown["billing"] and "no keys of its own · 2 budgets under it" in shown["org"]
    # what a key may still spend: the tightest cap of the budget and those above it
    left = {name: re.search(r'data-label="left">(.*?)</td>', row, re.S)[1] for name, row in shown.items()}
    assert left == {"org": "$80.00", "billing": "$10.00", "support": "$80.00"}
    assert budgets.list_budgets()[0].spent_micros == 20 * USD  # the page's figures are the ledger's
    key_page = browser_for(budgets).get("/ui/keys/kbk_billing").text
    assert '<a class="mono" href="/ui/budgets#budget-billing">billing</a>' in key_page
    live = browser_for(budgets).get("/ui/budgets?fragment=live")
    assert live.status_code == 200 and "<html" not in live.text and list(rows(live.text)) == list(shown)


def test_freeze_and_unfreeze_are_csrf_forms_and_the_ledger_refuses_then_decides_again(budgets):
    browser = browser_for(budgets)
    csrf = form_csrf(browser, "/ui/budgets")
    evil = {"origin": "https://evil.example"}
    for data, headers in (({}, ORIGIN), ({"csrf": "0" * 64}, ORIGIN), ({"csrf": csrf}, evil)):
        answer = browser.post("/ui/budgets/org/freeze", data=data, headers=headers)
        assert answer.status_code == 403 and "did not go through" in answer.text
    assert budgets.get_budget("org").frozen_at is None and admit(budgets).allowed

    answer = browser.post("/ui/budgets/org/freeze", data={"csrf": csrf}, headers=ORIGIN)
    assert (answer.status_code, answer.headers["location"]) == (303, "/ui/budgets?done=frozen&budget=org#budget-org")
    assert budgets.get_budget("org").frozen_at is not None
    assert budgets.get_budget("billing").frozen_by == "org"
    refused = admit(budgets)  # a key in a child budget: refused at its next call
    assert refused.refusal is not None and refused.refusal.kind is RefusalKind.BUDGET_FROZEN

    page = browser.get(answer.headers["location"])
    assert "Budget org is frozen" in page.text
    shown = rows(page.text)
    assert 'badge-frozen"' in shown["org"] and "data-unfreeze=\"org\"" in shown["org"]
    assert "frozen by org" in shown["billing"] and 'data-freeze="billing"' in shown["billing"]
    assert "none while frozen" in shown["billing"]  # nothing to spend, whatever its caps leave
    assert 'data-stat="frozen">1<' in page.text

    answer = browser.post("/ui/budgets/org/unfreeze", data={"csrf": csrf}, headers=ORIGIN)
    assert answer.headers["location"] == "/ui/budgets?done=unfrozen&budget=org#budget-org"
    assert budgets.get_budget("org").frozen_at is None and admit(budgets).allowed


@pytest.mark.parametrize("name", ["nobody", "-bad", "a" * 65])
def test_freezing_a_budget_that_does_not_exist_is_a_404(budgets, name):
    browser = browser_for(budgets)
    csrf = form_csrf(browser, "/ui/budgets")
    answer = browser.post(f"/ui/budgets/{name}/freeze", data={"csrf": csrf}, headers=ORIGIN)
    assert answer.status_code == 404 and "No budget by that name" in answer.text
    assert [b.frozen_at for b in budgets.list_budgets()] == [None, None, None]


def test_a_flash_names_only_a_budget_name(budgets):
    page = browser_for(budgets).get("/ui/budgets", params={"done": "frozen", "budget": "<script>"})
    assert "is frozen" not in page.text and "<script>" not in page.text.split("</head>")[1]


def test_a_viewer_who_may_not_see_every_key_sees_no_budgets_and_freezes_none(budgets):
    browser = browser_for(budgets, visibility=lambda token_id: ReadScope(vendors=("stripe",)))
    page = browser.get("/ui/budgets")
    assert "Budgets need an unrestricted admin token" in page.text and not rows(page.text)
    csrf = form_csrf(browser, "/ui/runs")
    answer = browser.post("/ui/budgets/org/freeze", data={"csrf": csrf}, headers=ORIGIN)
    assert answer.status_code == 403 and budgets.get_budget("org").frozen_at is None
