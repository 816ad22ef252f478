"""`keybrake audit --follow`: new audit rows as they are written, like `tail -f`.

Rows are polled by id. Ids are handed out before a transaction commits, so on PostgreSQL a
row with a smaller id can become visible after one with a larger id (two replicas, or two
batches of one). An id skipped over is asked for again until it shows up or GAP_GRACE_S has
passed (a transaction that rolled back never fills its ids), so a late commit is still printed,
once. The same works on SQLite, where ids arrive in order anyway.
"""

import time
from collections.abc import Callable, Sequence

GAP_GRACE_S = 30.0  # longer than any ledger transaction lasts (statement and lock timeouts are 5 s)
MAX_GAPS = 1000  # ids waited for at most at once: the newest are kept


class Follower:
    """Which rows to ask for next, and which of the rows an answer holds are new."""

    def __init__(self, after_id: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.last_id = after_id
        self._clock = clock
        self._gaps: dict[int, float] = {}  # a skipped id -> when it was first missed

    def wanted(self) -> tuple[int, tuple[int, ...]]:
        """(after_id, also_ids): rows past the last one seen, and the skipped ids still awaited."""
        now = self._clock()
        self._gaps = {gap: since for gap, since in self._gaps.items() if now - since < GAP_GRACE_S}
        return self.last_id, tuple(sorted(self._gaps))

    def take(self, rows: Sequence[dict]) -> list[dict]:
        """The rows not printed before, in id order; the ids they skip over are awaited."""
        now = self._clock()
        fresh = []
        for row in sorted(rows, key=lambda r: r["id"]):
            row_id = row["id"]
            if row_id in self._gaps:
                del self._gaps[row_id]
                fresh.append(row)
            elif row_id > self.last_id:
                for skipped in range(max(self.last_id + 1, row_id - MAX_GAPS), row_id):
                    self._gaps.setdefault(skipped, now)
                self.last_id = row_id
                fresh.append(row)
        if len(self._gaps) > MAX_GAPS:
            self._gaps = dict(sorted(self._gaps.items())[-MAX_GAPS:])
        return fresh
