"""A refusal's log line quotes a stranger's path: short and on one line, however long or odd the path."""

import asyncio
import logging

from keybrake_addon.gate import Gate
from keybrake_addon.ledger.base import LedgerUnavailable
from keybrake_addon.vendors import VENDORS
from keybrake_addon.vendors.base import VendorRequest


class UnreachableLedgerGate(Gate):
    def __init__(self) -> None:  # no installation: only the refusal path runs
        pass

    async def _check(self, *args):
        raise LedgerUnavailable("database is locked")


def test_a_refusal_log_line_is_bounded_and_on_one_line(caplog):
    path = "/v1/charges/" + "a" * 5_000 + "\n[fake] keybrake: all good\x1b[2J"
    request = VendorRequest(method="POST", path=path, query="", headers={}, body=b"")
    with caplog.at_level(logging.ERROR, logger="keybrake"):
        decision = asyncio.run(UnreachableLedgerGate().check(VENDORS["stripe"], request))
    assert decision.refusal is not None and decision.refusal.status == 503
    (line,) = [record.getMessage() for record in caplog.records]
    assert len(line) < 400 and "\n" not in line and "\x1b" not in line
    assert "database is locked" in line
