"""PostgreSQL gone, restarting or hung: the ledger refuses within seconds and recovers by itself."""

import asyncio
import os
import signal
import subprocess
import time

import pytest

from keybrake_addon.ledger.base import AdmitRequest, CallFacts, LedgerUnavailable
from keybrake_addon.ledger.executor import AsyncLedger
from keybrake_addon.ledger.postgres import PostgresLedger
from keybrake_addon.vendors.base import CostEstimate

from .conftest import KEY_HASH, USD, money, with_key

CALL = CallFacts("stripe", "POST", "/v1/payment_intents", None, None)
ADMIT = AdmitRequest(KEY_HASH, CALL, CostEstimate(usd_micros=10 * USD))


@pytest.fixture
def server_ledger(owned_pg):
    ledger = PostgresLedger(owned_pg.url, where="test", connect_timeout_s=2)
    ledger.put_secret("stripe", "default", b"n" * 12, b"sealed", "fp", None)
    with_key(ledger, total=100 * USD)
    yield owned_pg, ledger
    ledger.close()


def test_a_stopped_server_is_refused_at_once_and_recovered_without_reopening(server_ledger):
    server, ledger = server_ledger
    assert ledger.admit(ADMIT).allowed
    server.stop()
    started = time.monotonic()
    with pytest.raises(LedgerUnavailable):
        ledger.admit(ADMIT)
    assert time.monotonic() - started < 5
    server.start()
    deadline = time.monotonic() + 15
    while True:  # the pool reconnects by itself
        try:
            assert ledger.admit(ADMIT).allowed
            break
        except LedgerUnavailable:
            assert time.monotonic() < deadline, "the ledger did not recover once the server was back"
            time.sleep(0.2)
    assert money(ledger) == (0, 20)


def _server_pids(server) -> list[int]:
    found = subprocess.run(["pgrep", "-f", str(server.cluster.data_dir)], capture_output=True, text=True)
    postmaster = [int(pid) for pid in found.stdout.split()]
    children = subprocess.run(["pgrep", "-P", ",".join(map(str, postmaster))], capture_output=True, text=True)
    return postmaster + [int(pid) for pid in children.stdout.split()]


def test_a_hung_server_costs_a_caller_a_few_seconds_not_a_hang(server_ledger):
    server, ledger = server_ledger
    pids = _server_pids(server)
    assert pids

    async def run():
        executor = AsyncLedger(ledger, decision_timeout_s=3)
        assert (await executor.admit(ADMIT)).allowed
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(LedgerUnavailable):
                await executor.admit(ADMIT)
            waited = time.monotonic() - started
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 15
        while True:
            try:
                assert (await executor.admit(ADMIT)).allowed
                break
            except LedgerUnavailable:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        await executor.drain(5)
        return waited

    waited = asyncio.run(run())
    assert waited < 4
    # The call refused while the server hung was never forwarded: its late hold was given back.
    assert money(ledger) == (0, 20)
