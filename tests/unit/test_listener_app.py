"""The API listener's app in-process (Starlette's TestClient): routing, the vault adapter, health, metrics."""

import asyncio
import gzip
import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from keybrake_addon.api.openapi import OPENAPI
from keybrake_addon.api.tokens import AdminTokens, WorkerTokens
from keybrake_addon.api.vault_api import VaultApi
from keybrake_addon.installation import Installation
from keybrake_addon.ledger.sqlite import SqliteLedger
from keybrake_addon.listener.app import build_listener_app
from keybrake_addon.listener.metrics_page import MetricsPage
from keybrake_addon.listener.services import LedgerAccess, ListenerServices
from keybrake_addon.metrics.registry import Metrics
from keybrake_addon.vault.crypto import new_master_key
from keybrake_addon.vault.secrets import SecretVault

ISSUE = {"vendor": "stripe", "daily_usd_cap": 5, "allowed_endpoints": ["POST /v1/payment_intents"]}
METHODS = ("GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "TRACE")


class Proxy:
    """What the addon gives the app, with a ledger that can be 'not open yet' and readiness to set."""

    def __init__(self, tmp_path) -> None:
        self.ledger = SqliteLedger(tmp_path / "ledger.db")
        master_key = new_master_key()
        SecretVault(self.ledger, master_key).put("stripe", "default", "sk_test_" + "a" * 24)
        _, self.token = AdminTokens(self.ledger).create("tests")
        self.api = VaultApi(Installation(home=None, ledger=self.ledger, master_key=master_key, database=None),
                            self.run_in_db)
        self.open, self.ready = True, True

    @staticmethod
    async def run_in_db(function, *args):
        return function(*args)

    async def access(self):
        return LedgerAccess(self.ledger, self.run_in_db) if self.open else None

    async def vault_api(self):
        return self.api if self.open else None

    async def is_ready(self):
        return self.ready

    def app(self, extra_routes=()):
        services = ListenerServices(ledger=self.access, vault_api=self.vault_api,
                                    not_ready_reason=lambda: "Keybrake cannot open its ledger.", is_ready=self.is_ready)
        self.metrics = Metrics()
        return build_listener_app(services, MetricsPage(self.metrics, self.access), extra_routes)


@pytest.fixture
def proxy(tmp_path):
    made = Proxy(tmp_path)
    yield made
    made.ledger.close()


class Client:
    """Synchronous requests to an ASGI app, each on its own event loop (httpx's ASGITransport)."""

    def __init__(self, app, token: str | None = None) -> None:
        self.app, self.headers = app, {"authorization": f"Bearer {token}"} if token else {}

    def request(self, method: str, path: str, headers: dict | None = None, **kwargs) -> httpx.Response:
        async def send():
            transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False, client=("10.0.0.7", 5000))
            async with httpx.AsyncClient(transport=transport, base_url="http://keybrake") as client:
                return await client.request(method, path, headers={**self.headers, **(headers or {})}, **kwargs)

        return asyncio.run(send())

    def get(self, path: str, **kwargs) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> httpx.Response:
        return self.request("POST", path, **kwargs)


@pytest.fixture
def client(proxy):
    return Client(proxy.app(), proxy.token)


def declared() -> list[tuple[str, set[str]]]:
    concrete = {"/vault/keys/{key_id}": "/vault/keys/kbk_0123456789ab"}
    return [(concrete.get(path, path), {m.upper() for m in item if m != "parameters"})
            for path, item in OPENAPI["paths"].items()] + [("/vault/openapi.json", {"GET"})]


@pytest.mark.parametrize("path, methods", declared())
def test_an_undeclared_method_on_a_declared_path_is_405_with_allow(client, path, methods):
    for method in set(METHODS) - methods:
        answer = client.request(method, path)
        assert answer.status_code == 405, (method, path)
        assert answer.headers["allow"] == ", ".join(sorted(methods))
        assert answer.json()["error"]["code"] == "method_not_allowed"
    # A trailing slash is the same route, as VaultApi routes it.
    assert client.request("PATCH", path + "/").status_code == 405


def test_the_vault_api_answers_through_the_adapter(client, proxy):
    issued = client.post("/vault/keys", json={**ISSUE, "agent_run_label": "run a&b"})
    assert issued.status_code == 201 and issued.headers["content-type"] == "application/json"
    # Query values are decoded once, the first of a repeated parameter wins (as VaultApi always had it).
    listed = client.get("/vault/keys?label=run%20a%26b&label=other")
    assert [k["key_id"] for k in listed.json()["data"]] == [issued.json()["key_id"]]
    assert client.get("/vault/keys/" + issued.json()["key_id"]).json()["label"] == "run a&b"
    again = client.post("/vault/keys", json=ISSUE, headers={"idempotency-key": "k1"})
    replay = client.post("/vault/keys", json=ISSUE, headers={"idempotency-key": "k1"})
    assert (again.status_code, replay.status_code, replay.headers["idempotent-replayed"]) == (201, 200, "true")
    assert client.get("/vault/nothing").status_code == 404  # VaultApi's own 404, after authentication
    bare = client.get("/vault/keys", headers={"authorization": ""})
    assert (bare.status_code, bare.headers["www-authenticate"]) == (401, "Bearer")
    assert client.get("/vault/openapi.json", headers={"authorization": ""}).json()["openapi"] == "3.1.0"


def test_a_compressed_body_is_refused_unread(client, proxy):
    # 64 KiB of gzip can inflate to 64 MiB: nothing is decompressed before authentication.
    answer = client.post("/vault/keys", content=gzip.compress(json.dumps(ISSUE).encode()),
                         headers={"content-encoding": "gzip", "content-type": "application/json"})
    assert (answer.status_code, answer.json()["error"]["code"]) == (415, "unsupported_encoding")
    assert proxy.ledger.list_keys() == []


def test_503_while_the_ledger_is_not_open(client, proxy):
    proxy.open = False
    for path in ("/vault/keys", "/metrics"):
        answer = client.get(path)
        assert (answer.status_code, answer.headers["retry-after"]) == (503, "2")
        assert answer.json()["error"] == {"code": "unavailable", "message": "Keybrake cannot open its ledger."}


def test_health_needs_no_token_and_says_only_a_word(client, proxy):
    assert client.get("/healthz", headers={"authorization": ""}).json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    proxy.ready = False
    not_ready = client.get("/readyz")
    assert (not_ready.status_code, not_ready.headers["retry-after"], not_ready.text) == (
        503, "2", '{"status":"unavailable"}')
    assert client.get("/healthz").status_code == 200
    refused = client.post("/healthz")
    assert (refused.status_code, refused.headers["allow"]) == (405, "GET, HEAD")


def test_other_paths_are_a_json_404_that_names_the_routes(client):
    answer = client.get("/nothing/here")
    assert answer.status_code == 404
    assert "/vault/..." in answer.json()["error"]["message"] and "/metrics" in answer.json()["error"]["message"]
    assert client.get("/healthz/").status_code == 404  # no redirect to guess a route


def test_metrics_need_an_admin_token(client, proxy):
    bare = client.get("/metrics", headers={"authorization": ""})
    assert (bare.status_code, bare.headers["www-authenticate"]) == (401, "Bearer")
    assert client.get("/metrics", headers={"authorization": "Bearer kba_wrong"}).status_code == 401
    _, worker_token = WorkerTokens(proxy.ledger).create("a worker")  # opens the forward proxy, not this
    assert client.get("/metrics", headers={"authorization": f"Bearer {worker_token}"}).status_code == 401
    scraped = client.get("/metrics")
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    names = {family.name for family in text_string_to_metric_families(scraped.text)}
    assert {"keybrake_requests", "keybrake_ledger_up", "keybrake_spend_usd", "keybrake_build_info"} <= names
    assert client.post("/metrics").status_code == 405


def test_extra_routes_join_the_app_and_failures_say_nothing_secret(proxy):
    async def boom(request):
        raise RuntimeError("sk_live_" + "s" * 24)

    ui = Mount("/ui", routes=[Route("/", lambda request: PlainTextResponse("dashboard")), Route("/boom", boom)])
    client = Client(proxy.app([ui]))
    assert client.get("/ui/").text == "dashboard"
    failed = client.get("/ui/boom")
    assert failed.status_code == 500 and "sk_live_" not in failed.text
    assert failed.json()["error"]["code"] == "internal_error"
