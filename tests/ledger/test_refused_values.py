"""A value the database refuses (PostgreSQL's DataError: a number past bigint, text it cannot
hold) is that call's problem: the server answered, so the ledger is up. Its neighbours in the batch
are decided, and no later call is refused as if the database were down.

Before, a DataError was read as "the ledger is unavailable": every call in the batch got a 503,
and the next calls for KNOWN_DOWN_S were refused without trying. A worker holding a key without
a cap could do that to every other worker of its replica, one request at a time.
"""

import asyncio

from keybrake_addon.ledger.base import AdmitRequest, LedgerUnavailable
from keybrake_addon.ledger.executor import AsyncLedger
from keybrake_addon.ledger.postgres import PostgresLedger
from keybrake_addon.vendors.base import CostEstimate

from .conftest import KEY_HASH, USD, with_key
from .test_executor import CALL, Recording, request

PAST_BIGINT = 2**63  # micros: an amount a price check lets through on a key without a cap


def test_a_refused_value_fails_its_call_alone_and_the_ledger_stays_up(pg_url):
    postgres = PostgresLedger(pg_url, where="test")
    postgres.put_secret("stripe", "default", b"n" * 12, b"sealed", "fp", None)
    with_key(postgres)  # no cap at all
    store = Recording(postgres)

    async def run():
        ledger = AsyncLedger(store)
        store.gate.clear()  # hold the ledger thread, so the calls queue into one batch
        first = asyncio.ensure_future(ledger.admit(request(1)))
        while not store.entered.is_set():
            await asyncio.sleep(0.01)
        queued = [asyncio.ensure_future(ledger.admit(request(10))) for _ in range(3)]
        bad = asyncio.ensure_future(ledger.admit(AdmitRequest(KEY_HASH, CALL, CostEstimate(usd_micros=PAST_BIGINT))))
        await asyncio.sleep(0.1)
        store.gate.set()
        results = await asyncio.gather(first, *queued, bad, return_exceptions=True)
        after = await ledger.admit(request(5))  # tried, not refused as "known down"
        key = store.store.get_key("kbk_test")
        ledger.close()  # (and the store)
        return results, after, key

    (first, *queued, bad), after, key = asyncio.run(run())
    assert first.allowed and all(not isinstance(a, BaseException) and a.allowed for a in queued), queued
    assert isinstance(bad, LedgerUnavailable)
    assert after.allowed
    assert (key.reserved_micros, key.calls) == ((1 + 30 + 5) * USD, 5)
