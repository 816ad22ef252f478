"""The API listener's Starlette app in-process, on a fresh ledger, as the proxy builds it: a
stored secret per vendor and an unrestricted admin token."""

from dataclasses import dataclass

from starlette.applications import Starlette

from keybrake_addon.api.tokens import AdminTokens
from keybrake_addon.api.vault_api import VaultApi
from keybrake_addon.installation import Installation
from keybrake_addon.ledger.sqlite import SqliteLedger
from keybrake_addon.ledger.store import SqlLedger
from keybrake_addon.listener.app import build_listener_app
from keybrake_addon.listener.metrics_page import MetricsPage
from keybrake_addon.listener.services import LedgerAccess, ListenerServices
from keybrake_addon.metrics.registry import Metrics
from keybrake_addon.vault.crypto import new_master_key
from keybrake_addon.vault.secrets import SecretVault


@dataclass
class Listener:
    app: Starlette
    token: str  # an unrestricted admin token
    ledger: SqlLedger


def listener_on_sqlite(path) -> Listener:
    return listener_on(SqliteLedger(path))


def listener_on(ledger: SqlLedger) -> Listener:
    master_key = new_master_key()
    vault = SecretVault(ledger, master_key)
    vault.put("stripe", "default", "sk_test_" + "a" * 24)
    vault.put("twilio", "default", "t" * 32, "AC" + "0" * 32)
    vault.put("resend", "default", "re_" + "c" * 24)
    _, token = AdminTokens(ledger).create("tests")

    async def run_in_db(function, *args):
        return function(*args)

    api = VaultApi(Installation(home=None, ledger=ledger, master_key=master_key, database=None), run_in_db)

    async def access():
        return LedgerAccess(ledger, run_in_db)

    async def vault_api():
        return api

    async def ready():
        return True

    services = ListenerServices(ledger=access, vault_api=vault_api, not_ready_reason=lambda: "not open",
                                is_ready=ready)
    return Listener(build_listener_app(services, MetricsPage(Metrics(), access)), token, ledger)
