"""When this process found the ledger unable to answer, and when it answered again.

The gate's ledger (executor.py) reports each batch that failed or committed; the alert deliverer
reports its own polls (reads), so an idle proxy notices a PostgreSQL server that went away too.
An outage is kept from its first failure to the first answer after it, by this process's clock
(the database's clock is what is missing). A read that succeeds does not end an outage in which
writes failed (a SQLite file on a full or read-only disk still reads): only a commit ends that. The deliverer writes the finished ones to the outbox as
`ledger.unavailable` and `ledger.recovered`: while the ledger is down nothing can be written to it.
Metrics can read `down` for a ledger-up gauge.
"""

import threading
from dataclasses import dataclass
from datetime import datetime

from .times import utc_now

SHORTEST_OUTAGE_S = 1.0  # a lock held a moment too long is not news; a second of 503s is
KEPT_OUTAGES = 100  # finished outages waiting to be written (the oldest go first if the ledger never returns)
REASON_CHARS = 200


@dataclass(frozen=True)
class Outage:
    started: datetime
    ended: datetime
    reason: str  # the first failure's message (ledger errors never quote parameters or passwords)


class OutageWatch:
    def __init__(self, clock=utc_now) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._since: datetime | None = None
        self._reason = ""
        self._writes_failed = False
        self._finished: list[Outage] = []

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, error: BaseException, *, writing: bool = True) -> None:
        with self._lock:
            if self._since is None:
                self._since, self._reason = self._clock(), str(error)[:REASON_CHARS]
            self._writes_failed = self._writes_failed or writing

    def answered(self, *, writing: bool = True) -> None:
        if self._since is None:  # the usual case, without taking the lock: one read per batch
            return
        with self._lock:
            if self._since is None or (self._writes_failed and not writing):
                return
            self._writes_failed = False
            outage = Outage(self._since, self._clock(), self._reason)
            self._since = None
            if (outage.ended - outage.started).total_seconds() >= SHORTEST_OUTAGE_S:
                self._finished = [*self._finished, outage][-KEPT_OUTAGES:]

    def take_finished(self) -> list[Outage]:
        with self._lock:
            finished, self._finished = self._finished, []
        return finished

    def put_back(self, outages: list[Outage]) -> None:
        """Outages that could not be written yet: kept for the next try."""
        with self._lock:
            self._finished = [*outages, *self._finished][-KEPT_OUTAGES:]
