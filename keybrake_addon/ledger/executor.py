"""The ledger the gate awaits: admits, settlements and refusal rows, committed in batches.

Group commit: one thread applies the ledger's work. While it commits a batch, new work queues;
the next batch takes all of it in one transaction (one BEGIN/COMMIT on SQLite, a handful of
round trips on PostgreSQL, whatever the batch's size). Each decision in a batch sees the ones
before it, so caps stay exact.

Settlements and refusal rows need no answer: they are queued and never hold up a request. A
settlement that cannot commit (the database is gone) is retried with backoff for as long as the
process lives; its hold stays counted meanwhile, and whatever is left at exit is logged.

SQLite only: when nothing is queued or committing, admits and settlements are decided right on
the event loop, through a connection that never waits for the write lock. The first call in a turn
of the loop is decided at once (a lone call pays no hop at all, and saves two thread hand-offs);
what arrives after it in the same turn is applied together, in one transaction, at the turn's end.
So many callers share one commit, without a thread contending with the loop for the GIL. Under
load (the last turn's transaction held several admits) the first call waits for its turn's end
too: one commit per turn instead of two, where a commit writes every page the turn touched. A held
lock sends the work to the ledger thread's queue. BENCHMARKS.md has the figures for both paths.

A settlement lingers for up to SETTLE_LINGER_S, on the loop (SQLite) or in the ledger thread's
queue (PostgreSQL), so that the next admit (which, one call after another, follows its reply within a few milliseconds)
commits it in its own transaction: one transaction per call instead of two. Settlements are applied
before admits in a batch, a settlement lingering on the loop goes ahead of any admit handed to the
ledger thread, and the thread takes every lingering settlement with its next admit, so every
decision still sees every settlement that came before it. While it lingers the hold stays counted
as reserved, as it would if the process died: never an under-count.
"""

import asyncio
import heapq
import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..text import loggable
from .base import (AdmitRequest, Admission, CallFacts, CommitOutcomeLost, LedgerBusy, LedgerRefusedValue,
                   LedgerUnavailable, Resolution, SettleRequest)
from .outages import OutageWatch
from .store import Refused, SqlLedger

logger = logging.getLogger("keybrake")

MAX_BATCH = 256
# After the ledger failed (busy past its timeout, unreachable), admits fail at once for this long
# instead of queueing behind each other for a timeout apiece: a refusal must come back before
# the client's own timeout. The next batch after it tries the database again.
KNOWN_DOWN_S = 1.0
SETTLE_LINGER_S = 0.02  # see the module's docstring: long enough for the next call of a lone caller
DECISION_TIMEOUT_S = 6.0  # an admit answers within this, decided or not (then 503: nothing forwarded)
SETTLE_RETRY_DELAYS_S = (0.2, 0.5, 1, 2, 5, 10, 30, 60)  # then every 60 s, for as long as the process lives
REFUSAL_ROW_RETRIES = 3
CLOSE_WAIT_S = 10.0  # at close, for the batch being applied (a hung database outlives it: see close)


@dataclass
class _Admit:
    request: AdmitRequest
    future: asyncio.Future
    timer: asyncio.TimerHandle | None = None  # the decision timeout, while the ledger thread has it
    abandoned: bool = False  # answered "too late" already: a late admission is released


@dataclass(order=True)
class _Settle:
    not_before: float
    request: SettleRequest = field(compare=False)
    failures: int = field(default=0, compare=False)


@dataclass
class DrainReport:
    settled: int  # settlements committed while draining
    left: int  # settlements still not committed (their holds stay counted)
    seconds: float


class AsyncLedger:
    def __init__(self, store: SqlLedger, *, inline: SqlLedger | None = None,
                 decision_timeout_s: float = DECISION_TIMEOUT_S) -> None:
        self._store = store
        self._inline = inline
        self._decision_timeout_s = decision_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._condition = threading.Condition()
        self._admits: deque[_Admit] = deque()
        self._settles: list[_Settle] = []  # retries waiting out their backoff: a heap by not_before
        self._lingering: deque[_Settle] = deque()  # new settlements for the thread, oldest first: see _run
        self._refusals: deque[tuple[Refused, int]] = deque()
        # Work for the loop's own transaction at the end of this turn (SQLite's inline path).
        self._loop_admits: list[_Admit] = []
        self._loop_settles: list[SettleRequest] = []
        self._flush_scheduled = False
        self._crowded = False  # the last turn's transaction held several admits: see the docstring
        self._linger: asyncio.TimerHandle | None = None  # flushes lingering settlements if no admit takes them
        self._busy = False  # a batch is being applied
        self._applying: list[_Settle] = []  # that batch's settlements
        self._down_until = 0.0  # see KNOWN_DOWN_S
        self._down_because: LedgerUnavailable | None = None
        self._stopping = False
        self._closed = False  # the thread has stopped: a settlement now can only be logged
        self._committed_settles = 0
        # (mode, seconds) of each write transaction, "inline" or "batch": the proxy's metrics.
        self.on_transaction: Callable[[str, float], None] | None = None
        self.outages = OutageWatch()  # for the ledger.unavailable/recovered alerts
        self._thread = threading.Thread(target=self._run, name="keybrake-ledger", daemon=True)
        self._thread.start()

    @property
    def store(self) -> SqlLedger:
        return self._store

    # --- the gate's calls (on the event loop) -------------------------------------------------

    async def admit(self, request: AdmitRequest) -> Admission:
        loop = asyncio.get_running_loop()
        self._loop = loop
        item = _Admit(request, loop.create_future())
        if self._inline is not None and self._idle():
            joins_the_turn = self._flush_scheduled or self._crowded
            self._schedule_flush(loop)  # the turn's end takes whatever else arrives in it
            if joins_the_turn:
                self._loop_admits.append(item)
            else:  # the first in this turn goes now
                self._apply_on_loop([item], self._take_lingering())
        elif time.monotonic() < self._down_until:
            raise self._known_down()
        else:
            self._settles_to_thread(self._take_lingering())  # ahead of the admit: it must see them
            self._to_thread(item, loop)
        return await item.future

    def settle(self, request: SettleRequest) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None  # called off the loop: the ledger thread takes it
        if loop is not None and self._inline is not None and not self._closed:
            if self._idle():
                self._loop = loop
                self._loop_settles.append(request)
                if self._flush_scheduled:
                    pass  # committed with this turn's transaction
                elif len(self._loop_settles) >= MAX_BATCH:
                    self._schedule_flush(loop)
                elif self._linger is None:
                    self._linger = loop.call_later(SETTLE_LINGER_S, self._flush_lingering)
                return
            self._settles_to_thread(self._take_lingering())  # the ones before it go first
        self._queue_settle(request)

    def flush_settlements(self) -> None:
        """Commit the settlements lingering on the loop now (on the loop only), and send the ledger
        thread's lingering ones at once, so that a read through this process's vault API or dashboard
        sees every call it has answered."""
        if self._loop_settles:
            self._flush_on_loop()
        if self._lingering:
            with self._condition:
                for item in self._lingering:
                    item.not_before = 0.0
                self._condition.notify()

    def record_refusal(self, call: CallFacts, refusal, key=None, *, summary: bool = False) -> None:
        with self._condition:
            self._refusals.append((Refused(call, refusal, key, summary), 0))
            self._condition.notify()

    def _observe(self, mode: str, started: float) -> None:
        """A committed transaction's time, for the metrics (failed ones are not timed). Called
        after the commit and outside its error handling: a metric can never undo or redo money."""
        if self.on_transaction is not None:
            try:
                self.on_transaction(mode, time.perf_counter() - started)
            except Exception:  # noqa: BLE001 - a metric that fails is a metric missed, nothing more
                pass

    def _known_down(self) -> LedgerUnavailable:
        failure = self._down_because
        kind = LedgerBusy if isinstance(failure, LedgerBusy) else LedgerUnavailable
        return kind(f"the ledger failed a moment ago ({failure})")

    def _idle(self) -> bool:
        # Under the lock: the thread takes a batch and sets _busy in one step, so a reading between
        # the two could see neither the work nor the flag.
        with self._condition:
            return not (self._busy or self._admits or self._settles or self._lingering or self._refusals)

    def _schedule_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush_on_loop)

    def _flush_on_loop(self) -> None:
        self._flush_scheduled = False
        admits, settles = self._loop_admits, self._take_lingering()
        self._loop_admits = []
        self._crowded = len(admits) > 1
        if admits or settles:
            self._apply_on_loop(admits, settles)

    def _flush_lingering(self) -> None:
        self._linger = None
        if not self._flush_scheduled and self._loop_settles:  # else this turn's flush takes them
            self._apply_on_loop([], self._take_lingering())

    def _take_lingering(self) -> list[SettleRequest]:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        settles, self._loop_settles = self._loop_settles, []
        return settles

    def _settles_to_thread(self, settles: list[SettleRequest]) -> None:
        for request in settles:
            self._queue_settle(request)

    def _apply_on_loop(self, admits: list[_Admit], settles: list[SettleRequest]) -> None:
        """Apply admits and settlements in one transaction on the loop, or hand them to the ledger
        thread when the write lock is taken (or the thread has work of its own)."""
        if self._idle():
            started = time.perf_counter()
            try:
                admissions, _ = self._inline.apply_batch([a.request for a in admits], settles, [])
            except LedgerBusy:
                pass  # another writer holds the lock: wait for it on the ledger thread
            except LedgerUnavailable as failure:
                self.outages.failed(failure)  # (SQLite's failed COMMIT rolled back: no CommitOutcomeLost here)
                for item in admits:
                    _answer(item, failure, self._release_late)
                for request in settles:
                    self._queue_settle(request)
                return
            except Exception:  # noqa: BLE001 - the ledger thread applies them one by one
                pass
            else:
                self._observe("inline", started)
                self._down_until = 0.0  # it answers again: queued admits need not fail fast
                self.outages.answered()
                self._committed_settles += len(settles)
                for item, admission in zip(admits, admissions):
                    _answer(item, admission, self._release_late)
                return
        for request in settles:
            self._queue_settle(request)
        for item in admits:
            if time.monotonic() < self._down_until:
                _answer(item, self._known_down(), self._release_late)
            else:
                self._to_thread(item, asyncio.get_running_loop())

    def _to_thread(self, item: _Admit, loop: asyncio.AbstractEventLoop) -> None:
        item.timer = loop.call_later(self._decision_timeout_s, self._time_out, item)
        with self._condition:
            self._admits.append(item)
            self._condition.notify()

    def _time_out(self, item: _Admit) -> None:
        # The batch may still commit: if it admits this call, its hold is released then.
        if not item.future.done():
            item.abandoned = True
            item.future.set_exception(
                LedgerUnavailable(f"the ledger did not decide within {self._decision_timeout_s:g} s"))


    def _queue_settle(self, request: SettleRequest) -> None:
        with self._condition:
            if not self._closed:
                # With a loop path (SQLite) settlements linger on the loop; one that reaches the
                # thread there goes at once, so the loop's connection is soon idle again.
                linger = SETTLE_LINGER_S if self._inline is None else 0.0
                self._lingering.append(_Settle(time.monotonic() + linger, request))
                self._condition.notify()
                return
        _never_committed(request)  # a reply's settlement scheduled before close, run after it

    def _release_late(self, admission: Admission, why: str = "the ledger answered too late") -> None:
        """An admission nobody will act on (decided too late, or its caller gone): not forwarded,
        so its hold goes back."""
        if admission.allowed and admission.reservation_id is not None:
            self._queue_settle(SettleRequest(
                admission.audit_id, admission.reservation_id,
                Resolution.RELEASE if admission.opened else Resolution.LEAVE,
                None, None, (), None, None, None, False, 0.0, error=f"not forwarded: {why}", opened=admission.opened))

    def _release_if_committed(self, failure: LedgerUnavailable) -> None:
        """A batch whose COMMIT got no answer refused its admits; the holds it may have written go
        back once the ledger answers. Where it did not commit, each release finds no row and does nothing."""
        if not isinstance(failure, CommitOutcomeLost) or not failure.admissions:
            return
        logger.warning("keybrake: the ledger's answer to a commit was lost (%s); its %d admitted calls were refused "
                       "and not forwarded, and their holds are released once the ledger answers", failure,
                       len(failure.admissions))
        for admission in failure.admissions:
            self._release_late(admission, "the ledger's answer to its commit was lost")

    @property
    def unsettled(self) -> int:
        with self._condition:
            return len(self._settles) + len(self._lingering) + len(self._applying) + len(self._loop_settles)

    async def drain(self, timeout_s: float) -> DrainReport:
        """Wait for queued work (settlements above all) to commit, for up to `timeout_s`."""
        started = time.monotonic()
        committed_before = self._committed_settles
        if self._loop_settles and not self._flush_scheduled:
            self._apply_on_loop([], self._take_lingering())  # no admit is coming to take them
        with self._condition:  # retries waiting for their backoff go now
            for item in (*self._settles, *self._lingering):
                item.not_before = 0.0
            heapq.heapify(self._settles)
            self._condition.notify()
        while time.monotonic() - started < timeout_s:
            with self._condition:
                if not (self._busy or self._admits or self._settles or self._lingering or self._refusals
                        or self._flush_scheduled or self._loop_settles):
                    break
            await asyncio.sleep(0.02)
        with self._condition:
            left = len(self._settles) + len(self._lingering) + len(self._applying)
        return DrainReport(self._committed_settles - committed_before, left, time.monotonic() - started)

    def close(self) -> None:
        self._settles_to_thread(self._take_lingering())  # never dropped: the thread commits them before it stops
        with self._condition:
            self._stopping = True
            self._condition.notify()
        self._thread.join(timeout=CLOSE_WAIT_S)
        with self._condition:
            self._closed = True
            left = [item.request for item in (*self._settles, *self._lingering)]
            # The process exits with the thread: a batch still hanging on the database is reported
            # now (it may yet commit), and a failure after this requeues nothing (_retry_later).
            hanging = [item.request for item in self._applying] if self._thread.is_alive() else []
            self._settles.clear()
            self._lingering.clear()
        for request in left:
            _never_committed(request)
        for request in hanging:
            _never_committed(request, still_committing=True)
        if self._inline is not None:
            self._inline.close()
        self._store.close()

    # --- the ledger thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._stopping and not self._ready():
                    self._condition.wait(timeout=self._next_wait())
                if self._stopping and not self._ready():
                    return
                admits = [self._admits.popleft() for _ in range(min(len(self._admits), MAX_BATCH))]
                refusals = [self._refusals.popleft() for _ in range(min(len(self._refusals), MAX_BATCH))]
                settles = []
                now = time.monotonic()
                while self._settles and self._settles[0].not_before <= now and len(settles) < MAX_BATCH:
                    settles.append(heapq.heappop(self._settles))
                # A new settlement waits up to SETTLE_LINGER_S for a batch that commits anyway, and
                # goes with the next admit: each decision sees the settlements queued before it.
                if admits or refusals or settles or self._lingering_due(now):
                    while self._lingering and len(settles) < MAX_BATCH:
                        settles.append(self._lingering.popleft())
                self._busy, self._applying = True, settles
            try:
                self._apply(admits, settles, refusals)
            finally:
                with self._condition:
                    self._busy, self._applying = False, []

    def _ready(self) -> bool:
        now = time.monotonic()
        due = bool(self._settles) and self._settles[0].not_before <= now
        return bool(self._admits or self._refusals or due or self._lingering_due(now))

    def _lingering_due(self, now: float) -> bool:
        return bool(self._lingering) and (self._stopping or self._lingering[0].not_before <= now)

    def _next_wait(self) -> float | None:
        heads = [queue[0].not_before for queue in (self._settles, self._lingering) if queue]
        if not heads:
            return None
        return max(0.0, min(heads) - time.monotonic())

    def _apply(self, admits: list[_Admit], settles: list[_Settle], refusals: list[tuple[Refused, int]]) -> None:
        if admits and time.monotonic() < self._down_until:
            self._deliver([(item, self._known_down()) for item in admits])
            admits = []
        started = time.perf_counter()
        try:
            admissions, _ = self._store.apply_batch([a.request for a in admits], [s.request for s in settles],
                                                    [r for r, _ in refusals])
        except LedgerRefusedValue as failure:  # one item's value: the database answered, so it is up
            self._isolate(admits, settles, refusals, failure)
            return
        except LedgerUnavailable as failure:
            self._down_until, self._down_because = time.monotonic() + KNOWN_DOWN_S, failure
            self.outages.failed(failure)
            self._release_if_committed(failure)
            self._deliver([(item, failure) for item in admits])
            self._retry_later(settles, refusals, failure)
            return
        except Exception as failure:  # noqa: BLE001 - one bad item must not fail its neighbours for ever
            self._isolate(admits, settles, refusals, failure)
            return
        self._observe("batch", started)
        self._committed_settles += len(settles)
        self._no_longer_applying(settles)
        self._down_until = 0.0
        self.outages.answered()
        self._deliver(list(zip(admits, admissions)))

    def _isolate(self, admits: list[_Admit], settles: list[_Settle], refusals: list[tuple[Refused, int]],
                 failure: Exception) -> None:
        """Apply a failed batch's items one by one; the one that fails alone is refused, or logged."""
        if len(admits) + len(settles) + len(refusals) > 1:
            for item in admits:
                self._apply([item], [], [])
            for item in settles:
                self._apply([], [item], [])
            for item in refusals:
                self._apply([], [], [item])
            return
        # Where it failed, never the exception's text: a driver's message can quote a row's values.
        frame = traceback.extract_tb(failure.__traceback__)[-1] if failure.__traceback__ else None
        logger.error("keybrake: the ledger failed on one item (unexpected %s at %s); an admit is refused, a "
                     "settlement's hold stays counted", type(failure).__name__,
                     f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" if frame else "?")
        self._deliver([(item, LedgerUnavailable("the ledger failed on this call")) for item in admits])
        self._no_longer_applying(settles)
        for item in settles:
            _never_committed(item.request)  # which hold, and the command that settles it by hand

    def _retry_later(self, settles: list[_Settle], refusals: list[tuple[Refused, int]],
                     failure: LedgerUnavailable) -> None:
        now = time.monotonic()
        with self._condition:
            if self._closed:
                return  # close() reported them: nobody is left to retry them
            self._no_longer_applying(settles)  # in the queue now: counted, and reported at close, once
            for item in settles:
                delay = SETTLE_RETRY_DELAYS_S[min(item.failures, len(SETTLE_RETRY_DELAYS_S) - 1)]
                if item.failures == 0:
                    logger.warning("keybrake: settlement of reservation %s waits for the ledger (%s); its hold "
                                   "stays counted", item.request.reservation_id, failure)
                heapq.heappush(self._settles, _Settle(now + delay, item.request, item.failures + 1))
            for refused, failures in refusals:
                if failures + 1 < REFUSAL_ROW_RETRIES:
                    self._refusals.append((refused, failures + 1))
                else:  # no money: the call was refused either way; say it was not recorded
                    logger.warning("keybrake: a refusal of %s %s was not recorded: %s", loggable(refused.call.method, 16),
                                   loggable(refused.call.path), failure)

    def _no_longer_applying(self, settles: list[_Settle]) -> None:
        """Committed or queued again: no longer the hanging batch's (a batch applied item by item
        after a failure commits some before others)."""
        if settles:
            with self._condition:
                done = {id(item) for item in settles}
                self._applying = [item for item in self._applying if id(item) not in done]

    def _deliver(self, results: list) -> None:
        if not results or self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._set_results, results)
        except RuntimeError:
            pass  # the loop is closed: nobody waits any more

    def _set_results(self, results: list) -> None:
        for item, result in results:
            _answer(item, result, self._release_late)


def _never_committed(request: SettleRequest, *, still_committing: bool = False) -> None:
    # Never dropped silently: the hold stays counted, and the operator can settle it.
    what = ("was still being committed when the ledger stopped waiting for the database; if it did not commit, "
            "its hold stays counted" if still_committing else "was never committed; its hold stays counted")
    logger.error("keybrake: settlement of reservation %s (audit row %s, %s) %s: check the vendor, then "
                 "`keybrake reconcile --reservation %s`", request.reservation_id, request.audit_id,
                 request.resolution.value, what, request.reservation_id)


def _answer(item: _Admit, result, release_late) -> None:
    if item.timer is not None:
        item.timer.cancel()
    if item.abandoned or item.future.done():
        # Refused as too late, or the caller went away (cancelled): the call was never forwarded.
        if isinstance(result, Admission):
            release_late(result)
        return
    if isinstance(result, BaseException):
        item.future.set_exception(result)
    else:
        item.future.set_result(result)
