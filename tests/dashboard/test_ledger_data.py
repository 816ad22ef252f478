"""The browser tests' ledger tells the same story at any hour: its "today" calls fall on one UTC day.

CI failed at 05:17 UTC because the run refused at its cap, written seven hours back, fell on
yesterday, and the overview counts today's cap hits.
"""

from datetime import UTC, datetime, timedelta

import pytest

from keybrake_addon.ledger.dashboard_reads import DashboardReads, ReadScope
from keybrake_addon.ledger.sqlite import SqliteLedger

from . import ledger_data
from .ledger_data import SettableClock, populate

TIMES_OF_DAY = ["00:00", "00:30", "05:17", "09:59", "10:00", "12:00", "21:59", "22:00", "23:59"]


class RealTime:
    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def __call__(self) -> datetime:
        return self.moment


@pytest.fixture
def real_time(monkeypatch) -> RealTime:
    real = RealTime(datetime(2026, 12, 3, 12, 0, tzinfo=UTC))
    monkeypatch.setattr(ledger_data, "utc_now", real)
    return real


@pytest.mark.parametrize("time_of_day", TIMES_OF_DAY)
def test_todays_cap_hit_and_unknown_hold_are_counted_today_at_any_hour(tmp_path, real_time, time_of_day):
    hour, minute = map(int, time_of_day.split(":"))
    real_time.moment = datetime(2026, 12, 3, hour, minute, 30, tzinfo=UTC)
    clock = SettableClock()
    ledger = SqliteLedger(tmp_path / "keybrake.db", clock=clock)
    try:
        populate(ledger, clock)
        overview = DashboardReads(ledger).overview(ReadScope.everything())
        assert (overview.cap_hits_today, overview.unknown_holds, overview.near_cap_count) == (1, 1, 1)
        assert overview.now <= real_time.moment, "the ledger's clock may lag real time, never lead it"
        # A test run takes minutes: the ledger's "today" lasts at least an hour more.
        assert (overview.now + timedelta(hours=1)).date() == overview.now.date()
    finally:
        ledger.close()


def test_once_populated_the_clock_moves_with_real_time(tmp_path, real_time):
    real_time.moment = datetime(2026, 12, 3, 5, 17, tzinfo=UTC)
    clock = SettableClock()
    ledger = SqliteLedger(tmp_path / "keybrake.db", clock=clock)
    try:
        populate(ledger, clock)
        before = clock()
        real_time.moment += timedelta(minutes=10)
        assert clock() - before == timedelta(minutes=10)
    finally:
        ledger.close()
