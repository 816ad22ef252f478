"""Opening the gate, and opening it again later when the ledger cannot be opened at start.

A proxy that starts while its database is on a read-only volume, or locked by another writer
past the busy timeout, keeps running: every vendor call gets a vendor-shaped 503 (nothing is
forwarded) and the next call at least REOPEN_INTERVAL_S later tries again, off the event loop.
Once the trouble ends the proxy works without a restart. A wrong master key or a bad pricing
file is not trouble that ends by itself: those still stop the proxy at start.
"""

import asyncio
import logging
import time
from dataclasses import dataclass

from .gate import Gate
from .home import KeybrakeHome
from .installation import open_installation
from .ledger.base import LedgerUnavailable
from .ledger.urls import DatabaseUrl
from .pricing import Pricing

logger = logging.getLogger("keybrake")

REOPEN_INTERVAL_S = 1.0


@dataclass
class GateOpener:
    home: KeybrakeHome
    pricing: Pricing
    busy_timeout_s: float
    database: DatabaseUrl
    gate: Gate | None = None  # once opened, every caller gets this one
    last_error: str = ""
    _next_try: float = 0.0
    _opening: asyncio.Lock | None = None

    def open(self) -> Gate:
        """Open the installation and the gate, or raise LedgerUnavailable having opened nothing."""
        installation = open_installation(self.home, database=self.database, busy_timeout_s=self.busy_timeout_s,
                                         background_checkpoints=True)
        try:
            return Gate(installation, self.pricing)
        except BaseException:
            installation.close()
            raise

    def open_or_wait(self) -> Gate | None:
        """At start: the gate, or None (logged) if the ledger cannot be opened yet."""
        try:
            self.gate = self.open()
            return self.gate
        except LedgerUnavailable as error:
            self._failed(error)
            # A warning, not an error: mitmproxy exits on any error logged during start-up.
            logger.warning("keybrake: cannot open the ledger yet (%s). Every vendor call gets a 503 until it "
                           "can; retrying at most every %.0f s.", error, REOPEN_INTERVAL_S)
            return None

    async def open_when_due(self) -> Gate | None:
        """Later: one attempt at a time, at most every REOPEN_INTERVAL_S, on a thread (it may wait)."""
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self.gate is not None or time.monotonic() < self._next_try:
                return self.gate
            try:
                self.gate = await asyncio.to_thread(self.open)
            except LedgerUnavailable as error:
                self._failed(error)
                return None
        logger.warning("keybrake: the ledger is open now; vendor calls are checked and forwarded again.")
        return self.gate

    def _failed(self, error: LedgerUnavailable) -> None:
        self.last_error = str(error)
        self._next_try = time.monotonic() + REOPEN_INTERVAL_S
