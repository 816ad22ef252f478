"""The async ledger the gate awaits: group commit, settlements that never block, failures.

These drive AsyncLedger over a real SQLite ledger, with a thin wrapper where a test needs the
store to be slow or to fail.
"""

import asyncio
import threading
import time
from collections import deque

import pytest

from keybrake_addon.ledger.base import AdmitRequest, CallFacts, LedgerUnavailable, Resolution, SettleRequest
from keybrake_addon.ledger.executor import AsyncLedger
from keybrake_addon.ledger.sqlite import SqliteLedger
from keybrake_addon.vendors.base import CostEstimate, Refusal, RefusalKind

from .conftest import KEY_HASH, USD, money, with_key

CALL = CallFacts("stripe", "POST", "/v1/payment_intents", None, None)


def request(usd: float) -> AdmitRequest:
    return AdmitRequest(KEY_HASH, CALL, CostEstimate(usd_micros=int(usd * USD)))


def settlement(admission, resolution=Resolution.SETTLE, actual=None) -> SettleRequest:
    return SettleRequest(admission.audit_id, admission.reservation_id, resolution, actual, 200, (), None, None, None,
                         False, 1.0)


class Recording:
    """A store that records each batch it applies, and can be slowed or made to fail."""

    def __init__(self, store: SqliteLedger) -> None:
        self.store = store
        self.batches: list[tuple[int, int, int]] = []
        self.delay_s = 0.0
        self.failures_left = 0
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set when a batch reaches the gate
        self.in_caller: list[bool] = []  # per batch: applied inside the caller's own await (decided at once)

    def apply_batch(self, admits, settles, refusals):
        self.entered.set()
        self.gate.wait()
        time.sleep(self.delay_s)
        if self.failures_left:
            self.failures_left -= 1
            raise LedgerUnavailable("the test's database is gone")
        self.batches.append((len(admits), len(settles), len(refusals)))
        self.in_caller.append(_in_a_task())
        return self.store.apply_batch(admits, settles, refusals)

    def close(self) -> None:
        self.store.close()


def _in_a_task() -> bool:
    try:
        return asyncio.current_task() is not None
    except RuntimeError:  # the ledger thread: no loop there
        return False


@pytest.fixture
def store(tmp_path):
    ledger = SqliteLedger(tmp_path / "l.db")
    ledger.put_secret("stripe", "default", b"n" * 12, b"sealed", "fp", None)
    with_key(ledger, total=500 * USD)
    return Recording(ledger)


def test_admits_that_arrive_together_commit_together_and_stay_exact(store):
    async def run():
        ledger = AsyncLedger(store)
        store.gate.clear()  # hold the first batch until all 64 callers have queued
        calls = [asyncio.ensure_future(ledger.admit(request(50))) for _ in range(64)]
        await asyncio.sleep(0.1)
        store.gate.set()
        admissions = await asyncio.gather(*calls)
        ledger.close()
        return admissions

    admissions = asyncio.run(run())
    assert sum(a.allowed for a in admissions) == 10
    assert len(store.batches) < 64 / 4  # grouped: far fewer transactions than calls
    assert sum(admits for admits, _, _ in store.batches) == 64


def test_a_settlement_never_waits_for_the_database(store):
    async def run():
        ledger = AsyncLedger(store)
        admission = await ledger.admit(request(50))
        store.delay_s = 0.5
        started = time.monotonic()
        ledger.settle(settlement(admission, actual=40 * USD))
        ledger.record_refusal(CALL, Refusal(RefusalKind.MISSING_KEY, "no key"))
        returned_after = time.monotonic() - started
        report = await ledger.drain(5)
        ledger.close()
        return returned_after, report

    returned_after, report = asyncio.run(run())
    assert returned_after < 0.05
    assert (report.settled, report.left) == (1, 0)
    assert money(SqliteLedger(store.store.database.path)) == (40, 0)


def test_settlements_wait_out_an_outage_and_then_commit(store, monkeypatch):
    monkeypatch.setattr("keybrake_addon.ledger.executor.SETTLE_RETRY_DELAYS_S", (0.05, 0.05, 0.1))

    async def run():
        ledger = AsyncLedger(store)
        admission = await ledger.admit(request(50))
        store.failures_left = 4
        ledger.settle(settlement(admission, actual=50 * USD))
        report = await ledger.drain(5)
        ledger.close()
        return report

    report = asyncio.run(run())
    assert report.left == 0
    assert money(SqliteLedger(store.store.database.path)) == (50, 0)


def test_settlements_left_at_exit_are_logged_and_their_holds_stay_counted(store, caplog):
    async def run():
        ledger = AsyncLedger(store)
        admission = await ledger.admit(request(50))
        store.failures_left = 10_000
        ledger.settle(settlement(admission, actual=50 * USD))
        report = await ledger.drain(0.3)
        ledger.close()
        return admission, report

    admission, report = asyncio.run(run())
    assert report.left == 1
    assert f"reservation {admission.reservation_id}" in caplog.text and "never committed" in caplog.text
    assert money(SqliteLedger(store.store.database.path)) == (0, 50)


def test_an_admit_the_database_decides_too_late_is_refused_and_its_hold_released(store):
    async def run():
        ledger = AsyncLedger(store, decision_timeout_s=0.2)
        store.delay_s = 0.6
        with pytest.raises(LedgerUnavailable):
            await ledger.admit(request(50))
        store.delay_s = 0.0
        await asyncio.sleep(0.8)  # the late batch commits; its hold goes back
        await ledger.drain(2)
        ledger.close()

    asyncio.run(run())
    key = SqliteLedger(store.store.database.path).get_key("kbk_test")
    assert (key.spent_micros, key.reserved_micros, key.calls) == (0, 0, 1)


def test_one_failing_item_does_not_fail_its_neighbours(store):
    async def run():
        ledger = AsyncLedger(store)
        store.gate.clear()
        good = [asyncio.ensure_future(ledger.admit(request(10))) for _ in range(3)]
        bad = asyncio.ensure_future(ledger.admit(AdmitRequest(KEY_HASH, CALL, "not an estimate")))
        await asyncio.sleep(0.1)
        store.gate.set()
        results = await asyncio.gather(*good, bad, return_exceptions=True)
        ledger.close()
        return results

    *good, bad = asyncio.run(run())
    assert all(a.allowed for a in good)
    assert isinstance(bad, LedgerUnavailable)


def test_sqlite_decides_on_the_loop_when_nothing_is_queued(tmp_path, store):
    inline = SqliteLedger(store.store.database.path, busy_timeout_s=0)

    async def run():
        ledger = AsyncLedger(store, inline=inline)
        admission = await ledger.admit(request(50))
        ledger.settle(settlement(admission, actual=50 * USD))
        await ledger.drain(2)
        ledger.close()

    asyncio.run(run())
    assert store.batches == []  # both went through the never-waiting connection
    assert money(SqliteLedger(store.store.database.path)) == (50, 0)


def test_while_the_ledger_thread_commits_an_admit_queues_instead_of_waiting_on_the_loop(store):
    inline = SqliteLedger(store.store.database.path, busy_timeout_s=0)

    async def run():
        ledger = AsyncLedger(store, inline=inline)
        store.gate.clear()
        store.entered.clear()
        ledger.record_refusal(CALL, Refusal(RefusalKind.MISSING_KEY, "no key"))  # the thread takes it, and waits
        assert await asyncio.to_thread(store.entered.wait, 5)
        admitted = asyncio.ensure_future(ledger.admit(request(50)))
        await asyncio.sleep(0.1)
        assert not admitted.done()  # queued behind the batch, not run on the loop
        store.gate.set()
        admission = await admitted
        ledger.close()
        return admission

    assert asyncio.run(run()).allowed
    assert [admits for admits, _, _ in store.batches] == [0, 1]


def test_after_a_failure_admits_are_refused_at_once_then_the_database_is_tried_again(store, monkeypatch):
    monkeypatch.setattr("keybrake_addon.ledger.executor.KNOWN_DOWN_S", 0.3)

    async def run():
        ledger = AsyncLedger(store)
        store.failures_left = 1
        store.delay_s = 0.2  # each try of the database costs a caller this long
        with pytest.raises(LedgerUnavailable):
            await ledger.admit(request(10))
        started = time.monotonic()
        with pytest.raises(LedgerUnavailable):
            await ledger.admit(request(10))  # not queued behind another try
        refused_in = time.monotonic() - started
        await asyncio.sleep(0.35)
        admitted = await ledger.admit(request(10))
        ledger.close()
        return refused_in, admitted

    refused_in, admitted = asyncio.run(run())
    assert refused_in < 0.1
    assert admitted.allowed


def test_a_success_on_the_loop_ends_the_fail_fast_window(store, monkeypatch):
    # A batch failed (another writer held the lock past the timeout). Once the loop's own attempt
    # succeeds, an admit queued right after it must be decided, not refused for the whole window.
    monkeypatch.setattr("keybrake_addon.ledger.executor.KNOWN_DOWN_S", 5.0)
    inline = SqliteLedger(store.store.database.path, busy_timeout_s=0)

    async def queued_behind_a_batch(ledger):
        store.gate.clear()
        store.entered.clear()
        ledger.record_refusal(CALL, Refusal(RefusalKind.MISSING_KEY, "no key"))  # the thread takes it, and waits
        assert await asyncio.to_thread(store.entered.wait, 5)
        admitted = asyncio.ensure_future(ledger.admit(request(10)))
        await asyncio.sleep(0.05)
        store.gate.set()
        return await asyncio.gather(admitted, return_exceptions=True)

    async def run():
        ledger = AsyncLedger(store, inline=inline)
        # The batch fails, and so do the refusal row's retries (it is dropped after the last), so
        # nothing the ledger thread commits ends the window: only the loop's own success can.
        store.failures_left = 1 + 2
        [failed] = await queued_behind_a_batch(ledger)
        await ledger.drain(2)  # the thread is idle again, the window still open
        on_the_loop = await ledger.admit(request(10))
        [queued] = await queued_behind_a_batch(ledger)
        ledger.close()
        return failed, on_the_loop, queued

    failed, on_the_loop, queued = asyncio.run(run())
    assert isinstance(failed, LedgerUnavailable)
    assert on_the_loop.allowed
    assert not isinstance(queued, BaseException) and queued.allowed


def test_in_one_turn_of_the_loop_the_first_call_is_decided_at_once_and_the_rest_share_one_transaction(store):
    inline = Recording(SqliteLedger(store.store.database.path, busy_timeout_s=0))

    async def run():
        ledger = AsyncLedger(store, inline=inline)
        admissions = await asyncio.gather(*(ledger.admit(request(50)) for _ in range(12)))
        for admission in admissions:
            if admission.allowed:
                ledger.settle(settlement(admission, actual=10 * USD))
        await ledger.drain(2)
        ledger.close()
        return admissions

    admissions = asyncio.run(run())
    assert sum(a.allowed for a in admissions) == 10  # $500 cap, $50 each: exact within one transaction
    assert store.batches == []  # nothing went to the ledger thread
    assert inline.batches == [(1, 0, 0), (11, 0, 0), (0, 10, 0)]  # the settlements linger into one, too
    assert money(SqliteLedger(store.store.database.path)) == (100, 0)


def test_under_load_each_turn_of_the_loop_is_one_transaction(store):
    """Once a turn's transaction held several admits, the next turn's first call waits for its
    turn's end too: the turn's settlements and admits share one commit, not two."""
    inline = Recording(SqliteLedger(store.store.database.path, busy_timeout_s=0))

    async def caller(ledger):
        for _ in range(3):
            admission = await ledger.admit(request(5))
            ledger.settle(settlement(admission, actual=USD))

    async def run():
        ledger = AsyncLedger(store, inline=inline)
        await asyncio.gather(*(caller(ledger) for _ in range(12)))
        await ledger.drain(2)
        ledger.close()

    asyncio.run(run())
    # The first caller's admission is done before it awaits, so its next call joins the first turn.
    assert inline.batches == [(1, 0, 0), (12, 1, 0), (12, 12, 0), (11, 12, 0), (0, 11, 0)]
    assert inline.in_caller == [True, False, False, False, True]  # the last: drain, in the test's task
    assert store.batches == []
    assert money(SqliteLedger(store.store.database.path)) == (36, 0)


def test_after_the_load_a_lone_call_is_decided_at_once_again(store):
    inline = Recording(SqliteLedger(store.store.database.path, busy_timeout_s=0))

    async def run():
        ledger = AsyncLedger(store, inline=inline)
        await asyncio.gather(*(ledger.admit(request(5)) for _ in range(4)))
        for _ in range(3):
            await ledger.admit(request(5))
            await asyncio.sleep(0.01)
        ledger.close()

    asyncio.run(run())
    # The first lone call after the load waits for its turn's end; the ones after it go at once.
    assert inline.batches == [(1, 0, 0), (3, 0, 0), (1, 0, 0), (1, 0, 0), (1, 0, 0)]
    assert inline.in_caller == [True, False, False, True, True]


def test_a_lone_callers_settlement_commits_with_its_next_admit(store):
    """One call after another: one transaction per call, not two."""
    inline = Recording(SqliteLedger(store.store.database.path, busy_timeout_s=0))

    async def run():
        ledger = AsyncLedger(store, inline=inline)
        for _ in range(3):
            admission = await ledger.admit(request(50))
            await asyncio.sleep(0.001)  # the reply goes out; the next call comes in a moment later
            ledger.settle(settlement(admission, actual=10 * USD))
        await ledger.drain(2)
        ledger.close()

    asyncio.run(run())
    assert inline.batches == [(1, 0, 0), (1, 1, 0), (1, 1, 0), (0, 1, 0)]
    assert store.batches == []
    assert money(SqliteLedger(store.store.database.path)) == (30, 0)


def test_on_the_ledger_thread_too_a_lone_callers_settlement_commits_with_its_next_admit(store, monkeypatch):
    """PostgreSQL's path (and SQLite's when the loop's connection is busy): one transaction per
    call, not two. A settlement waits in the thread's queue for the next admit's batch."""
    monkeypatch.setattr("keybrake_addon.ledger.executor.SETTLE_LINGER_S", 0.3)  # a loaded box's sleep can overrun 5 ms

    async def run():
        ledger = AsyncLedger(store)
        for _ in range(3):
            admission = await ledger.admit(request(50))
            ledger.settle(settlement(admission, actual=10 * USD))  # the vendor's answer
            await asyncio.sleep(0.002)  # the reply goes out; the next call comes in a moment later
        held_at_the_end = money(SqliteLedger(store.store.database.path))
        await asyncio.sleep(0.6)  # no drain: the linger's own deadline sends the last one
        settled = money(SqliteLedger(store.store.database.path))
        ledger.close()
        return held_at_the_end, settled

    held_at_the_end, settled = asyncio.run(run())
    assert store.batches == [(1, 0, 0), (1, 1, 0), (1, 1, 0), (0, 1, 0)]
    assert held_at_the_end == (20, 50)  # while the last settlement lingers its hold stays counted
    assert settled == (30, 0)


def test_closing_commits_the_settlements_lingering_on_the_ledger_thread(store, caplog):
    async def run():
        ledger = AsyncLedger(store)
        admission = await ledger.admit(request(50))
        ledger.settle(settlement(admission, actual=20 * USD))
        ledger.close()  # at once: the linger has not run out

    asyncio.run(run())
    assert "never committed" not in caplog.text
    assert money(SqliteLedger(store.store.database.path)) == (20, 0)
    assert store.batches == [(1, 0, 0), (0, 1, 0)]


def test_a_lingering_settlement_commits_on_its_own_when_no_admit_comes(store):
    inline = Recording(SqliteLedger(store.store.database.path, busy_timeout_s=0))

    async def run():
        ledger = AsyncLedger(store, inline=inline)
        admission = await ledger.admit(request(50))
        ledger.settle(settlement(admission, actual=10 * USD))
        held_at_first = money(SqliteLedger(store.store.database.path))
        await asyncio.sleep(0.1)  # no drain: the linger's own timer commits it
        settled = money(SqliteLedger(store.store.database.path))
        ledger.close()
        return held_at_first, settled

    held_at_first, settled = asyncio.run(run())
    assert held_at_first == (0, 50)  # while it lingers the hold stays counted
    assert settled == (10, 0)
    assert inline.batches == [(1, 0, 0), (0, 1, 0)]


def test_flushing_commits_lingering_settlements_at_once(store):
    """What the API listener does before serving a read: this process's answered calls are in."""
    inline = Recording(SqliteLedger(store.store.database.path, busy_timeout_s=0))

    async def run():
        ledger = AsyncLedger(store, inline=inline)
        admission = await ledger.admit(request(50))
        await asyncio.sleep(0.01)
        ledger.settle(settlement(admission, actual=10 * USD))
        ledger.flush_settlements()
        flushed = money(SqliteLedger(store.store.database.path))
        ledger.close()
        return flushed

    assert asyncio.run(run()) == (10, 0)


def test_a_lingering_settlement_goes_ahead_of_an_admit_sent_to_the_ledger_thread(store, monkeypatch):
    """A settlement that books more than its hold must be seen by the next decision, wherever it
    is made: here the loop's connection is not idle, so the admit goes to the ledger thread."""
    monkeypatch.setattr("keybrake_addon.ledger.executor.SETTLE_LINGER_S", 5.0)  # its own timer never moves it
    inline = Recording(SqliteLedger(store.store.database.path, busy_timeout_s=0))

    async def run():
        ledger = AsyncLedger(store, inline=inline)
        admission = await ledger.admit(request(100))
        await asyncio.sleep(0.01)  # the call goes to the vendor, in a later turn of the loop
        ledger.settle(settlement(admission, actual=480 * USD))  # the vendor's answer: it cost more than held
        store.gate.clear()
        store.entered.clear()
        ledger.record_refusal(CALL, Refusal(RefusalKind.MISSING_KEY, "no key"))  # the thread takes it, and waits
        assert await asyncio.to_thread(store.entered.wait, 5)
        after = asyncio.ensure_future(ledger.admit(request(50)))  # $480 + $50 > $500: must be refused
        await asyncio.sleep(0.05)
        store.gate.set()
        decided = await after
        await ledger.drain(2)
        ledger.close()
        return decided

    decided = asyncio.run(run())
    assert not decided.allowed
    assert money(SqliteLedger(store.store.database.path)) == (480, 0)


def test_an_admit_whose_caller_went_away_has_its_hold_released(store):
    async def run():
        ledger = AsyncLedger(store)
        store.gate.clear()
        store.entered.clear()
        waiting = asyncio.ensure_future(ledger.admit(request(50)))
        assert await asyncio.to_thread(store.entered.wait, 5)
        waiting.cancel()  # the client hung up while the ledger decided: the call is never forwarded
        store.gate.set()
        await asyncio.sleep(0.05)
        await ledger.drain(2)
        ledger.close()

    asyncio.run(run())
    assert money(SqliteLedger(store.store.database.path)) == (0, 0)


@pytest.mark.parametrize("inline", [False, True], ids=["thread", "inline"])
def test_a_settlement_after_close_is_logged_never_dropped_in_silence(store, caplog, inline):
    """A reply's settlement can be scheduled (call_soon) before the shutdown and run after it."""
    inline_store = Recording(SqliteLedger(store.store.database.path, busy_timeout_s=0)) if inline else None

    async def run():
        ledger = AsyncLedger(store, inline=inline_store)
        admission = await ledger.admit(request(50))
        ledger.close()
        ledger.settle(settlement(admission, actual=20 * USD))
        await asyncio.sleep(0.05)  # a lingering settlement's timer would fire by now
        return admission

    admission = asyncio.run(run())
    assert f"reservation {admission.reservation_id}" in caplog.text and "never committed" in caplog.text
    assert money(SqliteLedger(store.store.database.path)) == (0, 50)  # the hold stays counted


class _TakenWhileRead:
    """A queue whose truth test lets the ledger thread take the work, as it may between two unlocked reads."""

    def __init__(self, ledger: AsyncLedger, item) -> None:
        self.ledger, self.items, self.taken = ledger, [item], threading.Event()

    def __bool__(self) -> bool:
        def take():
            with self.ledger._condition:
                self.items.clear()
                self.ledger._busy = True
            self.taken.set()

        threading.Thread(target=take, daemon=True).start()
        self.taken.wait(0.2)  # the lock held by the reader keeps the thread out
        return bool(self.items)


def test_the_ledger_is_not_idle_while_its_thread_takes_a_batch(store):
    """A consistent reading: queued work and the busy flag are read together, never half before a take."""
    async def run():
        ledger = AsyncLedger(store)
        try:
            ledger._admits = _TakenWhileRead(ledger, object())
            return ledger._idle()
        finally:
            with ledger._condition:
                ledger._admits, ledger._busy = deque(), False
            ledger.close()

    assert asyncio.run(run()) is False


def test_a_refusal_never_recorded_is_logged_with_its_strangers_text_made_visible(store, caplog):
    async def run():
        ledger = AsyncLedger(store)
        store.failures_left = 3  # every try of the refusal row fails
        ledger.record_refusal(CallFacts("stripe", "POST\x1b[2J", "/v1/\x1b]0;owned\x07" + "x" * 500, None, None),
                              Refusal(RefusalKind.UNKNOWN_KEY, "no such key"))
        for _ in range(100):
            if "was not recorded" in caplog.text:
                break
            await asyncio.sleep(0.05)
        ledger.close()

    asyncio.run(run())
    [line] = [r.getMessage() for r in caplog.records if "was not recorded" in r.getMessage()]
    assert "\x1b" not in line and "\x07" not in line  # a terminal reading the log acts on neither
    assert "POST\\x1b[2J /v1/\\x1b]0;owned\\x07" in line
    assert len(line) < 400


def test_a_settlement_that_fails_alone_names_its_hold_and_how_to_settle_it(store, caplog):
    async def run():
        ledger = AsyncLedger(store)
        admission, other = await ledger.admit(request(10)), await ledger.admit(request(20))
        ledger.settle(settlement(admission, actual="a price no vendor sends"))
        ledger.settle(settlement(other))
        ledger.flush_settlements()  # one batch for both: it fails, then each is tried alone
        for _ in range(100):
            if "was never committed" in caplog.text and money(store.store) == (20, 10):
                break
            await asyncio.sleep(0.05)
        totals = money(store.store)
        ledger.close()
        return admission, totals

    admission, totals = asyncio.run(run())
    assert totals == (20, 10)  # its neighbour settled; its own hold stays counted
    assert len([b for b in store.batches if b[1]]) >= 2  # tried together, then alone
    [line] = [r.getMessage() for r in caplog.records if "was never committed" in r.getMessage()]
    assert f"keybrake reconcile --reservation {admission.reservation_id}" in line


def test_a_settlement_whose_batch_still_hangs_at_close_is_counted_and_reported(store, caplog, monkeypatch):
    """A hung database at shutdown: the batch the ledger thread is applying outlives close()'s
    wait, and the process exits with it. Its settlements must be in the drain's count and in the
    log, and a failure after close must not requeue them for a thread that is gone."""
    monkeypatch.setattr("keybrake_addon.ledger.executor.CLOSE_WAIT_S", 0.2, raising=False)
    monkeypatch.setattr("keybrake_addon.ledger.executor.SETTLE_LINGER_S", 0.0)

    async def run():
        ledger = AsyncLedger(store)  # no inline path: the settlement goes to the ledger thread
        admission = await ledger.admit(request(50))
        store.gate.clear()
        store.entered.clear()
        store.failures_left = 1
        ledger.settle(settlement(admission, actual=50 * USD))
        assert await asyncio.to_thread(store.entered.wait, 5)
        report = await ledger.drain(0.2)
        return ledger, admission, report

    ledger, admission, report = asyncio.run(run())
    assert report.left == 1
    ledger.close()
    store.gate.set()  # the hung statement fails only now
    time.sleep(0.3)
    reported = [r.getMessage() for r in caplog.records if f"reservation {admission.reservation_id}" in r.getMessage()]
    assert len(reported) == 1 and "still being committed" in reported[0], reported
    assert ledger.unsettled == 0  # nothing requeued for a thread that has stopped
    assert money(SqliteLedger(store.store.database.path)) == (0, 50)  # the hold stays counted


def test_a_batch_applied_item_by_item_counts_only_what_is_still_uncommitted(store, monkeypatch):
    """After a failed batch, its items are applied one by one: those committed are no longer the
    batch's, so the drain's count (and close's report) names only the one still hanging."""
    hang_on, released = threading.Event(), threading.Event()
    hanging = {}  # the reservation whose settlement hangs
    real_apply = store.apply_batch

    def apply(admits, settles, refusals):
        if len(settles) > 1:
            raise ValueError("one bad item")  # -> applied item by item
        if settles and settles[0].reservation_id == hanging["id"]:
            hang_on.set()
            released.wait(10)
        return real_apply(admits, settles, refusals)

    async def run():
        ledger = AsyncLedger(store)
        first, second = await ledger.admit(request(10)), await ledger.admit(request(20))
        hanging["id"] = second.reservation_id
        monkeypatch.setattr(store, "apply_batch", apply)
        for admission in (first, second):  # lingering together on the ledger thread: one batch
            ledger.settle(settlement(admission, actual=0))
        assert await asyncio.to_thread(hang_on.wait, 5)
        report = await ledger.drain(0.2)
        released.set()
        await ledger.drain(5)
        ledger.close()
        return report

    assert asyncio.run(run()).left == 1
