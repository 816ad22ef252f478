"""The installation's money and holds, read from the ledger when Prometheus scrapes.

One read of the keys' own counters (one row per key, never the audit trail) and of the open
holds (an index keeps only those), cached for CACHE_S so that several scrapers, or a scrape of
both listeners, cost one read. A ledger that does not answer within READ_TIMEOUT_S makes
`keybrake_ledger_up` 0 and leaves the money series out: stale money is worse than none.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable

from prometheus_client.core import GaugeMetricFamily

from ..money import MICROS_PER_USD
from ..vendors import VENDORS
from .registry import Metrics

CACHE_S = 5.0
READ_TIMEOUT_S = 2.0

# Per vendor, what SqlLedger.metrics_totals returns; None while the ledger cannot be opened.
TotalsReader = Callable[[], Awaitable[dict[str, dict[str, int]] | None]]

_USD_SERIES = (  # name, help, the totals' field in micros
    ("keybrake_spend_usd", "Settled spend in USD over every vault key, all time (corrections included).",
     "spent_micros"),
    ("keybrake_spend_today_usd", "Settled spend in USD today (UTC), in the keys' daily windows.",
     "spent_today_micros"),
    ("keybrake_reserved_usd", "USD held by open reservations (unknown ones included): counted against caps "
     "until settled or reconciled.", "reserved_micros"),
    ("keybrake_unknown_usd", "USD held by reservations whose outcome nobody will report (the vendor answered "
     "5xx, the connection died, or the proxy run that made them is gone): `keybrake reconcile` settles them.",
     "unknown_micros"),
)
_COUNT_SERIES = (
    ("keybrake_reservations_open", "Reservations not yet settled, unknown ones included.", "open_reservations"),
    ("keybrake_reservations_unknown", "Reservations whose outcome nobody will report; they wait for "
     "`keybrake reconcile`.", "unknown_reservations"),
    ("keybrake_keys_active", "Vault keys neither revoked nor expired.", "active_keys"),
)
LEDGER_UP = ("keybrake_ledger_up", "1 when the ledger answered the last scrape's read (cached up to 5 s), else 0.")


class LedgerTotals:
    """A custom collector: `refresh()` (awaited before rendering) reads; `collect()` only reports."""

    def __init__(self, metrics: Metrics, read: TotalsReader, clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._clock = clock
        self._totals: dict[str, dict[str, int]] | None = None
        self._read_at = float("-inf")
        self._reading: asyncio.Future | None = None
        metrics.registry.register(self)

    async def refresh(self) -> None:
        if self._clock() - self._read_at < CACHE_S:
            return
        if self._reading is None:
            # One read at a time: a ledger that hangs must not pile reads up on the database thread.
            self._reading = asyncio.ensure_future(self._read())
            self._reading.add_done_callback(_consume)
        reading = self._reading
        try:
            totals = await asyncio.wait_for(asyncio.shield(reading), READ_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - unopened, failing or slow: the ledger is down for this scrape
            totals = None
        if reading.done():
            self._reading, self._read_at = None, self._clock()
        self._totals = totals

    def describe(self):
        yield GaugeMetricFamily(*LEDGER_UP)
        for name, documentation, _ in (*_USD_SERIES, *_COUNT_SERIES):
            yield GaugeMetricFamily(name, documentation, labels=["vendor"])

    def collect(self):
        totals = self._totals
        yield GaugeMetricFamily(*LEDGER_UP, value=0 if totals is None else 1)
        if totals is None:
            return
        for name, documentation, field in _USD_SERIES:
            family = GaugeMetricFamily(name, documentation, labels=["vendor"])
            for vendor in sorted(VENDORS):
                family.add_metric([vendor], totals.get(vendor, {}).get(field, 0) / MICROS_PER_USD)
            yield family
        for name, documentation, field in _COUNT_SERIES:
            family = GaugeMetricFamily(name, documentation, labels=["vendor"])
            for vendor in sorted(VENDORS):
                family.add_metric([vendor], totals.get(vendor, {}).get(field, 0))
            yield family


def _consume(future: asyncio.Future) -> None:
    """Take a read's failure, so asyncio does not log it (its text could name the database's host)."""
    if not future.cancelled():
        future.exception()
