"""A COMMIT whose answer is lost (PostgreSQL went down with it): the admits were refused, so the
holds the batch may have written are released once the ledger answers again.

Found by the fleet's outage scenario: a replica refused calls whose batch had in fact committed,
and their holds stayed open for good after every other call had settled.
"""

import asyncio
from contextlib import contextmanager

import pytest

from keybrake_addon.ledger.base import AdmitRequest, AuditFilter, CallFacts, CommitOutcomeLost, LedgerUnavailable
from keybrake_addon.ledger.executor import KNOWN_DOWN_S, AsyncLedger
from keybrake_addon.ledger.postgres import PostgresLedger
from keybrake_addon.vendors.base import CostEstimate

from .conftest import KEY_HASH, USD, admit, money, with_key


class LosesTheAnswer:
    """Wraps a database's write transactions: the next `count` lose their COMMIT's answer, after
    committing (`committed=True`) or with the COMMIT never arriving (rolled back)."""

    def __init__(self, database, *, committed: bool) -> None:
        self.real, self.committed, self.count = database.transaction, committed, 0

    @contextmanager
    def transaction(self, *, pipelined: bool = False):
        if self.count <= 0:
            with self.real(pipelined=pipelined) as tx:
                yield tx
            return
        self.count -= 1
        if self.committed:
            with self.real(pipelined=pipelined) as tx:
                yield tx
        else:
            with pytest.raises(_NeverSent), self.real(pipelined=pipelined) as tx:
                yield tx
                raise _NeverSent  # the body is done: the real transaction rolls back instead of committing
        raise LedgerUnavailable("the ledger is unavailable: AdminShutdown (57P01)")


class _NeverSent(Exception):
    pass


def losing(ledger, *, committed: bool, count: int = 1) -> LosesTheAnswer:
    wrapper = LosesTheAnswer(ledger.database, committed=committed)
    wrapper.count = count
    ledger.database.transaction = wrapper.transaction
    return wrapper


@pytest.fixture
def pg_ledger(pg_url):
    made = PostgresLedger(pg_url, where="test")
    made.put_secret("stripe", "default", b"n" * 12, b"sealed", "fp", None)
    with_key(made, total=100 * USD)
    yield made
    made.close()


@pytest.mark.parametrize("committed", [True, False], ids=["committed", "rolled-back"])
def test_a_lost_commit_names_the_holds_it_may_have_written(pg_ledger, committed):
    losing(pg_ledger, committed=committed)
    with pytest.raises(CommitOutcomeLost) as lost:
        admit(pg_ledger, 10)
    (admission,) = lost.value.admissions
    assert admission.allowed and admission.opened and admission.reservation_id is not None
    assert money(pg_ledger) == ((0, 10) if committed else (0, 0))


def test_sqlite_never_reports_a_lost_commit(tmp_path):
    from keybrake_addon.ledger.sqlite import SqliteLedger

    ledger = SqliteLedger(tmp_path / "l.db")
    try:
        ledger.put_secret("stripe", "default", b"n" * 12, b"sealed", "fp", None)
        with_key(ledger, total=100 * USD)
        losing(ledger, committed=False)
        with pytest.raises(LedgerUnavailable) as failed:
            admit(ledger, 10)
        # A failed SQLite COMMIT rolled back, and its ids are handed out again: nothing to look for.
        assert not isinstance(failed.value, CommitOutcomeLost)
    finally:
        ledger.close()


def _call(idem: str) -> AdmitRequest:
    return AdmitRequest(KEY_HASH, CallFacts("stripe", "POST", "/v1/payment_intents", idem, None),
                        CostEstimate(usd_micros=10 * USD))


@pytest.mark.parametrize("committed", [True, False], ids=["committed", "rolled-back"])
def test_the_refused_calls_holds_go_back_and_nothing_else_moves(pg_ledger, pg_url, committed):
    async def run():
        ledger = AsyncLedger(pg_ledger)
        losing(pg_ledger, committed=committed, count=1)
        with pytest.raises(LedgerUnavailable):  # the gate answers 503: nothing forwarded
            await ledger.admit(_call("lost-1"))
        await asyncio.sleep(KNOWN_DOWN_S + 0.1)  # past the fail-fast window: the ledger is tried again
        kept = await ledger.admit(_call("kept-1"))  # and answers: a call of its own
        report = await ledger.drain(10)
        ledger.close()
        return kept, report

    kept, report = asyncio.run(run())  # (closing the AsyncLedger closes pg_ledger)
    reader = PostgresLedger(pg_url, where="test")
    assert kept.allowed and report.left == 0
    assert money(reader) == (0, 10)  # only the call that was let through holds money
    rows = {row["idempotency_key"]: row for row in reader.audit_rows(AuditFilter(key_id="kbk_test"))}
    assert set(rows) == ({"lost-1", "kept-1"} if committed else {"kept-1"})
    if committed:
        assert rows["lost-1"]["outcome"] == "released"
        assert rows["lost-1"]["message"] == "not forwarded: the ledger's answer to its commit was lost"
    assert rows["kept-1"]["outcome"] is None  # still in flight: untouched by the releases
    reader.close()
