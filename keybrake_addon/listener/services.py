"""What the listener app needs from the running proxy, as plain callables (no mitmproxy, no gate)."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..api.vault_api import RunInDb, VaultApi
from ..health import Readiness
from ..ledger.store import SqlLedger


@dataclass(frozen=True)
class LedgerAccess:
    """The ledger for reads, and the thread its blocking calls run on (never the event loop)."""

    ledger: SqlLedger
    run_in_db: RunInDb


@dataclass(frozen=True)
class ListenerServices:
    # None while the ledger cannot be opened: answers that need it are 503s.
    ledger: Callable[[], Awaitable[LedgerAccess | None]]
    vault_api: Callable[[], Awaitable[VaultApi | None]]
    not_ready_reason: Callable[[], str]  # the 503's message when the ledger is not open
    is_ready: Readiness  # what /readyz answers
