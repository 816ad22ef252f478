"""Sessions, CSRF and the guards around them, over HTTP, on each ledger backend.

Two dashboard apps on one database stand for two replicas: a session made on one works on the
other, and ending it (sign-out, or revoking the admin token) ends it on both.
"""

import re
from contextlib import ExitStack

import pytest
from starlette.applications import Starlette

from keybrake_addon.api.tokens import AdminTokens
from keybrake_addon.ledger.base import LedgerUnavailable
from keybrake_addon.ledger.postgres import PostgresLedger
from keybrake_addon.ledger.sqlite import SqliteLedger
from keybrake_addon.listener.dashboard import dashboard_routes

from .http_forms import TestClient, client, form_csrf, signed_in
from .ledger_data import SettableClock, Writer, Facts

BOTH_BACKENDS = True


@pytest.fixture
def replicas(ledger_backend, tmp_path, request):
    """Two ledgers on one database, with a key and an admin token."""
    with ExitStack() as stack:
        if ledger_backend == "sqlite":
            opened = [SqliteLedger(tmp_path / "keybrake.db") for _ in range(2)]
        else:
            url = request.getfixturevalue("pg_url")
            opened = [PostgresLedger(url, where="test") for _ in range(2)]
        for ledger in opened:
            stack.callback(ledger.close)
        ledger = opened[0]
        ledger.put_secret("stripe", "default", b"n" * 12, b"sealed", "fp", None)
        Writer(ledger, SettableClock(), Facts(), key_prefix="kbk_form").key("stripe", "run/1", total=10**8)
        issued, token = AdminTokens(ledger).create("ops")
        yield opened, token, issued.token_id


def test_a_session_works_on_every_replica_and_sign_out_ends_it_on_all(replicas):
    (first, second), token, _ = replicas
    browser = signed_in(client(first), token)
    other = client(second)
    other.cookies.set("keybrake_session", browser.cookies["keybrake_session"], path="/ui")
    assert other.get("/ui/runs").status_code == 200
    csrf = form_csrf(other, "/ui/runs")
    assert other.post("/ui/logout", data={"csrf": csrf}).headers["location"] == "/ui/login?notice=signed_out"
    assert browser.get("/ui/runs").status_code == 303  # the first replica asks to sign in again


def test_revoking_the_admin_token_ends_its_sessions(replicas):
    (first, second), token, token_id = replicas
    browser = signed_in(client(first), token)
    assert browser.get("/ui/").status_code == 200
    AdminTokens(second).revoke(token_id)
    assert browser.get("/ui/").status_code == 303
    assert browser.get("/ui/?fragment=live").status_code == 401  # the page's script goes to sign-in


def test_a_state_changing_form_needs_its_csrf_token_and_our_origin(replicas):
    (ledger, _), token, _ = replicas
    browser = signed_in(client(ledger), token)
    csrf = form_csrf(browser, "/ui/keys/kbk_form001")
    for data, headers in (({}, {}), ({"csrf": "0" * 64}, {}),
                          ({"csrf": csrf}, {"origin": "https://evil.example"}), ({"csrf": csrf}, {"origin": "null"})):
        answer = browser.post("/ui/keys/kbk_form001/revoke", data=data, headers=headers)
        assert answer.status_code == 403 and "did not go through" in answer.text
    assert ledger.get_key("kbk_form001").revoked_at is None
    answer = browser.post("/ui/keys/kbk_form001/revoke", data={"csrf": csrf},
                          headers={"origin": "http://testserver"})
    assert answer.headers["location"] == "/ui/keys/kbk_form001?done=revoked"
    assert ledger.get_key("kbk_form001").revoked_at is not None


def test_sign_in_needs_the_forms_own_token_and_a_real_admin_token(replicas):
    (ledger, _), token, _ = replicas
    browser = client(ledger)
    assert browser.post("/ui/login", data={"token": token}).status_code == 403  # no sign-in form cookie
    csrf = re.search(r'name="csrf" value="([^"]+)"', browser.get("/ui/login").text)[1]
    refused = browser.post("/ui/login", data={"csrf": csrf, "token": "kba_" + "x" * 43})
    assert refused.status_code == 401 and "keybrake_session" not in refused.headers.get("set-cookie", "")
    assert browser.post("/ui/login", data={"csrf": csrf, "token": "x" * 10_000}).status_code == 413


@pytest.mark.parametrize("wanted", ["https://evil.example/", "//evil.example/ui/", "/ui\\@evil", "/vault/keys"])
def test_signing_in_never_sends_the_browser_off_the_dashboard(replicas, wanted):
    (ledger, _), token, _ = replicas
    browser = client(ledger)
    csrf = re.search(r'name="csrf" value="([^"]+)"', browser.get("/ui/login").text)[1]
    answer = browser.post("/ui/login", data={"csrf": csrf, "token": token, "next": wanted})
    assert answer.headers["location"] == "/ui/"


def test_cookies_are_secure_over_tls_and_pages_carry_security_headers(replicas):
    (ledger, _), token, _ = replicas
    browser = TestClient(Starlette(routes=dashboard_routes(ledger)), base_url="https://testserver",
                         follow_redirects=False)
    csrf = re.search(r'name="csrf" value="([^"]+)"', browser.get("/ui/login").text)[1]
    answer = browser.post("/ui/login", data={"csrf": csrf, "token": token})
    cookie = answer.headers["set-cookie"]
    assert all(part in cookie for part in ("keybrake_session=", "HttpOnly", "Secure", "SameSite=strict", "Path=/ui"))
    page = browser.get("/ui/")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "'unsafe-inline'" not in page.headers["content-security-policy"]
    assert (page.headers["x-frame-options"], page.headers["cache-control"]) == ("DENY", "no-store")
    assert browser.get("/ui/static/dashboard.js").headers["x-content-type-options"] == "nosniff"


def test_a_ledger_that_cannot_answer_gives_a_page_that_says_so(replicas):
    (ledger, _), token, _ = replicas

    async def down(*_args):
        raise LedgerUnavailable("the database is gone")

    browser = TestClient(Starlette(routes=dashboard_routes(ledger, run_in_db=down)), follow_redirects=False)
    browser.cookies.set("keybrake_session", "A" * 43, path="/ui")
    answer = browser.get("/ui/")
    assert answer.status_code == 503 and "The ledger is not answering" in answer.text
