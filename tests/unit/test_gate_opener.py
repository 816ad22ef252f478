"""GateOpener: a ledger that cannot be opened at start is retried later, at most once a second."""

import asyncio

import pytest

from keybrake_addon import gate_opener
from keybrake_addon.gate_opener import GateOpener
from keybrake_addon.ledger.base import LedgerUnavailable


class ScriptedOpener(GateOpener):
    """open() fails `failures` times, then returns a fresh object each call (a stand-in gate)."""

    def __init__(self, failures: int) -> None:
        super().__init__(home=None, pricing=None, busy_timeout_s=0.1, database=None)  # type: ignore[arg-type]
        self.failures = failures
        self.attempts = 0

    def open(self):
        self.attempts += 1
        if self.attempts <= self.failures:
            raise LedgerUnavailable("cannot open the ledger at /home/keybrake.db: unable to open database file")
        return object()


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(gate_opener.time, "monotonic", lambda: now[0])
    return now


def test_a_failed_start_waits_for_the_interval_then_opens_once(clock):
    opener = ScriptedOpener(failures=2)
    assert opener.open_or_wait() is None
    assert "unable to open database file" in opener.last_error

    async def scenario():
        assert await opener.open_when_due() is None  # not due yet: no attempt
        assert opener.attempts == 1
        clock[0] += gate_opener.REOPEN_INTERVAL_S
        assert await opener.open_when_due() is None  # due, fails again
        assert opener.attempts == 2
        clock[0] += gate_opener.REOPEN_INTERVAL_S
        together = await asyncio.gather(*(opener.open_when_due() for _ in range(5)))
        return together

    together = asyncio.run(scenario())
    assert opener.attempts == 3  # five callers at once, one attempt
    assert all(gate is together[0] and gate is not None for gate in together)


def test_an_open_ledger_at_start_needs_no_retry(clock):
    opener = ScriptedOpener(failures=0)
    gate = opener.open_or_wait()
    assert gate is not None and opener.last_error == ""
    assert asyncio.run(opener.open_when_due()) is gate
    assert opener.attempts == 1
