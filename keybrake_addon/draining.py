"""Graceful shutdown: which vendor calls are in flight, and what a drain left behind.

A call is in flight from the moment the gate admitted it (its hold is in the ledger) until its
response or error hook hands the settlement to the gate. A SIGTERM lets those calls finish
instead of cutting them off, since a cut-off call's hold can only show as unknown.
"""

import asyncio
from dataclasses import dataclass

DEFAULT_DRAIN_TIMEOUT_S = 10.0


class InFlight:
    """The vendor calls admitted and not yet answered, by flow id."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._empty = asyncio.Event()
        self._empty.set()
        self.finished = 0  # calls that left the set, ever: a drain reports the difference

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, flow_id: str) -> None:
        self._ids.add(flow_id)
        self._empty.clear()

    def discard(self, flow_id: str) -> None:
        if flow_id in self._ids:
            self._ids.remove(flow_id)
            self.finished += 1
        if not self._ids:
            self._empty.set()

    async def wait_empty(self, timeout_s: float) -> bool:
        """True once no call is in flight, False if some still are after timeout_s."""
        if self._empty.is_set():
            return True  # wait_for with no time left would say "timed out" even so
        try:
            await asyncio.wait_for(self._empty.wait(), max(timeout_s, 0.0))
        except TimeoutError:
            return False
        return True


@dataclass(frozen=True)
class DrainReport:
    calls_drained: int
    calls_left: int
    settlements_left: int
    seconds: float

    def message(self) -> str:
        drained = f"keybrake: drained {_count(self.calls_drained, 'call')} in flight in {self.seconds:.1f} s"
        if not self.calls_left and not self.settlements_left:
            return drained + ", settlements written; 0 left"
        left = []
        if self.calls_left:
            left.append(f"left {_count(self.calls_left, 'call')} in flight")
        if self.settlements_left:
            left.append(f"left {_count(self.settlements_left, 'settlement')} unwritten")
        holds = ("its hold stays counted and shows" if self.calls_left + self.settlements_left == 1
                 else "their holds stay counted and show")
        return f"{drained}; {' and '.join(left)}: {holds} as unknown until `keybrake reconcile`"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
