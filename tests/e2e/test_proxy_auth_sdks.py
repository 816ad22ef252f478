"""stripe-python and stripe-node through the forward proxy with proxy authentication, on both ledger backends.

Each SDK is refused (407) without a proxy credential and reaches nothing; with one in the proxy
URL's userinfo (a vault key for stripe-python, a worker token for stripe-node, which takes it
through https-proxy-agent), a parallel batch stops exactly at the cap. One proxy per backend
serves the whole module (`--proxy-auth required --api-port 0`): the money part runs on SQLite and
on PostgreSQL without a proxy start per test.
"""

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import stripe
from support.postgres import fresh_database

from keybrake_addon.fakes.fake_stripe import FakeStripe
from keybrake_addon.proxy_process import ProxyProcess

from .helpers import REAL_SECRET, keybrake, keybrake_json, settled_key_json
from .test_node_sdk import _tool, node_project  # noqa: F401 - node_project is a fixture of this module too

PI = {"amount": 5000, "currency": "usd", "confirm": True, "payment_method": "pm_card_visa"}
CAP, FITS = "475", 9  # $50 charges under a $475 daily cap
PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "all_proxy",
                   "no_proxy", "NODE_EXTRA_CA_CERTS", "NODE_OPTIONS")


@dataclass
class AuthProxy:
    proxy: ProxyProcess
    home: Path
    fake: FakeStripe
    worker_token: str
    admin_token: str

    def url_with(self, password: str) -> str:
        return f"http://worker:{password}@127.0.0.1:{self.proxy.port}"

    def issue(self, label: str) -> dict:
        return keybrake_json(self.home, "issue", "--vendor", "stripe", "--daily-usd-cap", CAP,
                             "--allow", "POST /v1/payment_intents", "--label", label)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def ledger_url(request):
    if request.param == "sqlite":
        yield None
        return
    with fresh_database(request.getfixturevalue("postgres_server").url) as url:
        yield url


@pytest.fixture(scope="module")
def auth_proxy(ledger_url, tmp_path_factory):
    root = tmp_path_factory.mktemp("proxy-auth-sdks")
    home = root / "home"
    with pytest.MonkeyPatch.context() as patch, FakeStripe(secret=REAL_SECRET) as fake:
        for name in PROXY_VARIABLES:
            patch.delenv(name, raising=False)
        if ledger_url is not None:
            patch.setenv("KEYBRAKE_DATABASE_URL", ledger_url)  # every keybrake process below uses it
        keybrake(home, "init")
        keybrake(home, "secret", "set", "stripe", stdin=REAL_SECRET + "\n")
        keybrake(home, "env")  # writes the CA bundle stripe-python is pointed at
        patch.setattr(stripe, "ca_bundle_path", str(home / "certs" / "keybrake-ca-bundle.pem"))
        proxy = ProxyProcess(home=home, upstreams=(f"stripe={fake.url}",), log_path=root / "proxy.log",
                             extra_args=("--proxy-auth", "required", "--api-port", "0")).start()
        try:
            yield AuthProxy(proxy, home, fake, keybrake_json(home, "worker-token", "create", "--name", "sdks")["token"],
                            keybrake_json(home, "admin-token", "create", "--name", "sdks")["token"])
        finally:
            proxy.stop()


def test_stripe_python_is_refused_without_a_credential_and_capped_with_one(auth_proxy):
    key = auth_proxy.issue("sdks/python")
    fake, hits, moved = auth_proxy.fake, auth_proxy.fake.hits, auth_proxy.fake.money_moved_minor

    with pytest.raises(stripe.APIConnectionError) as refused:
        stripe.StripeClient(key["vault_key"], proxy=auth_proxy.proxy.url,
                            max_network_retries=0).v1.payment_intents.create(params=PI)
    assert "407" in str(refused.value)

    # The worker's own vault key is its proxy password.
    client = stripe.StripeClient(key["vault_key"], proxy=auth_proxy.url_with(key["vault_key"]), max_network_retries=0)

    def charge(_):
        try:
            return client.v1.payment_intents.create(params=PI)
        except stripe.RateLimitError as error:
            return error

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(charge, range(20)))
    assert sum(not isinstance(r, Exception) for r in results) == FITS
    assert all(r.headers.get("x-keybrake-cap-hit") == "true" for r in results if isinstance(r, Exception))
    assert (fake.hits - hits, fake.money_moved_minor - moved) == (FITS, FITS * PI["amount"])
    shown = settled_key_json(auth_proxy.home, key["key_id"])
    assert (shown["spent_usd"], shown["reserved_usd"], shown["calls"]) == ("450.00", "0.00", FITS)  # calls: allowed ones


def run_node_batch(project: Path, auth_proxy: AuthProxy, proxy_url: str, n: int, label: str) -> dict:
    """tests/node/stripe_batch.mjs in forward mode (see test_node_sdk.py): issues a key, charges n times in parallel."""
    env = {name: value for name, value in os.environ.items() if name not in PROXY_VARIABLES}
    env.update(KEYBRAKE_URL=auth_proxy.proxy.api_url, KEYBRAKE_API_KEY=auth_proxy.admin_token, MODE="forward",
               N=str(n), AMOUNT=str(PI["amount"]), CAP=CAP, LABEL=label, HTTPS_PROXY=proxy_url,
               NODE_EXTRA_CA_CERTS=str(auth_proxy.home / "certs" / "keybrake-ca.pem"))
    result = subprocess.run([_tool("node"), "stripe_batch.mjs"], cwd=project, env=env, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{auth_proxy.proxy.log_text()[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_stripe_node_is_refused_without_a_credential_and_capped_with_one(auth_proxy, node_project):
    fake, hits, moved = auth_proxy.fake, auth_proxy.fake.hits, auth_proxy.fake.money_moved_minor

    refused = run_node_batch(node_project, auth_proxy, auth_proxy.proxy.url, 10, "sdks/node-no-credential")
    shown = json.dumps(refused, indent=1)[:4000]
    assert refused["succeeded"] == refused["cap_hits"] == 0 and len(refused["other_errors"]) == 10, shown
    assert (refused["response_statuses"], refused["attempts"]) == ([407], 10), shown  # answered at once, not retried
    assert fake.hits == hits, shown

    report = run_node_batch(node_project, auth_proxy, auth_proxy.url_with(auth_proxy.worker_token), 30, "sdks/node")
    shown = json.dumps(report, indent=1)[:4000]
    assert report["other_errors"] == [], shown
    assert (report["succeeded"], report["cap_hits"], report["attempts"]) == (FITS, 30 - FITS, 30), shown
    assert report["cap_hit_codes"] == ["keybrake_cap_exceeded"], shown
    assert report["spend"] == [{"key": report["key_id"], "spent_usd": "450.00", "reserved_usd": "0.00", "calls": 30,
                                "allowed": FITS, "refused": 30 - FITS, "cap_hits": 30 - FITS}], shown
    assert (fake.hits - hits, fake.money_moved_minor - moved) == (FITS, FITS * PI["amount"]), shown
    assert auth_proxy.worker_token not in auth_proxy.proxy.log_text()
