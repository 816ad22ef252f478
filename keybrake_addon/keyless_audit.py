"""The gate's audit of refusals without a valid vault key, through the bounds of keyless_refusals.py.

Rows within the bounds are queued on the ledger like any refusal; the refusals past them are
written as summary rows when their window ends (a timer on the event loop), at a drain, or with
the next refusal after the window, whichever comes first. Each summary is logged on one line too:
at most a handful a minute, and the operator's sign that someone is knocking.
"""

import asyncio
import logging
import time

from .keyless_refusals import KeylessRefusalLimiter, Summary
from .ledger.base import CallFacts, KeyRecord
from .ledger.times import utc_now
from .vendors.base import Refusal, RefusalKind

logger = logging.getLogger("keybrake")

_KINDS = {kind.code: kind for kind in RefusalKind}
TIMER_SLACK_S = 0.05  # fire just after the window's end, so the window has ended by the limiter's clock


class KeylessAudit:
    def __init__(self, ledger, limiter: KeylessRefusalLimiter | None = None, clock=time.monotonic) -> None:
        self._ledger = ledger  # ledger.executor.AsyncLedger: record_refusal queues, never blocks
        self.limiter = limiter or KeylessRefusalLimiter()
        self._clock = clock
        self._timer: asyncio.TimerHandle | None = None

    def refused(self, call: CallFacts, refusal: Refusal, client_address: str | None,
                key: KeyRecord | None = None) -> bool:
        """Audit this refusal, or count it for its window's summary. Returns whether it got a row."""
        now = self._clock()
        written = self.limiter.take(client_address, refusal.kind.code, call.vendor, now)
        if written:
            self._ledger.record_refusal(call, refusal, key)
        self._write(self.limiter.summaries(now))
        self._schedule(now)
        return written

    def flush(self, *, final: bool = False) -> int:
        """Write the summaries due (with `final`, the current window's too); returns how many."""
        summaries = self.limiter.summaries(self._clock(), final=final)
        self._write(summaries)
        return len(summaries)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self, now: float) -> None:
        if self._timer is not None or not self.limiter.pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous caller): the next refusal or the drain writes them
        self._timer = loop.call_later(self.limiter.seconds_to_window_end(now) + TIMER_SLACK_S, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()
        self._schedule(self._clock())

    def _write(self, summaries: list[Summary]) -> None:
        for summary in summaries:
            message = summary.message(self.limiter.window_s)
            logger.warning("keybrake: %s", message)
            kind = _KINDS.get(summary.codes[0][0], RefusalKind.MISSING_KEY) if summary.codes else RefusalKind.MISSING_KEY
            self._ledger.record_refusal(CallFacts(summary.vendor, "*", "*", None, utc_now()), Refusal(kind, message),
                                        summary=True)
