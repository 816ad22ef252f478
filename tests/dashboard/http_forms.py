"""A dashboard app in Starlette's TestClient, signed in as a browser would: read the form's CSRF
token, post it back with the session cookie."""

import re
import warnings

from starlette.applications import Starlette

from keybrake_addon.listener.dashboard import dashboard_routes

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def client(ledger, **options) -> TestClient:
    return TestClient(Starlette(routes=dashboard_routes(ledger, **options)), follow_redirects=False)


def login_csrf(browser: TestClient) -> str:
    return _CSRF.search(browser.get("/ui/login").text)[1]


def signed_in(browser: TestClient, token: str) -> TestClient:
    answer = browser.post("/ui/login", data={"csrf": login_csrf(browser), "token": token, "next": "/ui/runs"})
    assert (answer.status_code, answer.headers["location"]) == (303, "/ui/runs")
    return browser


def form_csrf(browser: TestClient, path: str) -> str:
    return _CSRF.search(browser.get(path).text)[1]
