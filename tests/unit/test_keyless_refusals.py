"""A client without a valid vault key gets a bounded number of audit rows a minute, from any number of addresses."""

import logging
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from keybrake_addon.keyless_audit import KeylessAudit
from keybrake_addon.keyless_refusals import (
    MAX_ROWS_PER_WINDOW,
    ROWS_PER_ADDRESS,
    ROWS_PER_WINDOW,
    WINDOW_S,
    KeylessRefusalLimiter,
    LogBudget,
    client_group,
)
from keybrake_addon.ledger.base import CallFacts, KeyRecord
from keybrake_addon.ledger.times import utc_now
from keybrake_addon.vendors.base import Refusal, RefusalKind

MISSING = RefusalKind.MISSING_KEY.code


def test_an_ipv6_client_is_its_64_and_a_mapped_ipv4_client_its_ipv4():
    assert client_group("203.0.113.7") == "203.0.113.7"
    assert client_group("2001:db8:1:2:aaaa::1") == client_group("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64"
    assert client_group("2001:db8:1:3::1") != client_group("2001:db8:1:2::1")
    assert client_group("::ffff:203.0.113.7") == "203.0.113.7"
    assert client_group("fe80::1%eth0") == "fe80::/64"
    assert client_group(None) == client_group("") == "unknown"
    assert len(client_group("not-an-address" * 100)) == 64


def test_one_address_gets_its_first_rows_then_one_summary_when_the_window_ends():
    limiter = KeylessRefusalLimiter()
    written = [limiter.take("198.51.100.1", MISSING, "stripe", now=5.0 + i / 1000) for i in range(1000)]
    assert written == [True] * ROWS_PER_ADDRESS + [False] * (1000 - ROWS_PER_ADDRESS)
    assert limiter.summaries(now=59.0) == []  # not before the window has ended
    assert limiter.take("198.51.100.2", MISSING, "stripe", now=59.5)  # another address has its own bound
    (summary,) = limiter.summaries(now=WINDOW_S + 1)
    assert (summary.group, summary.suppressed, summary.audited) == ("198.51.100.1", 990, ROWS_PER_ADDRESS)
    assert summary.codes == ((MISSING, 990),)
    assert "990 more refusals" in summary.message() and "198.51.100.1" in summary.message()
    assert limiter.summaries(now=WINDOW_S + 2) == []  # once
    assert limiter.take("198.51.100.1", MISSING, "stripe", now=WINDOW_S + 3)  # a new window, a new bound


def test_many_addresses_hit_the_global_bound_and_share_one_summary():
    limiter = KeylessRefusalLimiter()
    addresses = [f"2001:db8:{i:x}::1" for i in range(5000)]  # 5,000 different /64s
    written = sum(limiter.take(address, RefusalKind.UNKNOWN_KEY.code, "twilio", now=1.0) for address in addresses)
    assert written == ROWS_PER_WINDOW
    (summary,) = limiter.summaries(now=0.0, final=True)
    assert summary.group is None and summary.suppressed == 5000 - ROWS_PER_WINDOW and summary.vendor == "twilio"
    assert summary.sample[0] == f"2001:db8:{ROWS_PER_WINDOW:x}::/64" and len(summary.sample) == 5
    assert "past the bound of 60 rows" in summary.message()


def test_a_final_flush_summarises_the_current_window():
    limiter = KeylessRefusalLimiter(rows_per_address=1)
    limiter.take("192.0.2.1", MISSING, "stripe", now=1.0)
    limiter.take("192.0.2.1", RefusalKind.REAL_SECRET.code, "stripe", now=1.0)
    assert limiter.pending
    (summary,) = limiter.summaries(now=2.0, final=True)
    assert summary.suppressed == 1 and not limiter.pending


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.floats(0, 600, allow_nan=False)), max_size=600),
       st.integers(1, 12), st.integers(1, 80))
def test_whatever_is_sent_each_window_writes_at_most_the_bound_and_every_refusal_is_counted(
        events, per_address, per_window):
    limiter = KeylessRefusalLimiter(rows_per_address=per_address, rows_per_window=per_window)
    rows_by_window: Counter = Counter()
    counted = 0
    for index, (address, now) in enumerate(sorted(events, key=lambda e: e[1])):
        window = int(now // WINDOW_S)
        if limiter.take(f"10.0.{address // 256}.{address % 256}", MISSING, "stripe", now):
            rows_by_window[window] += 1
            counted += 1
        for summary in limiter.summaries(now):  # written when noticed, in the current window
            rows_by_window[window] += 1
            counted += summary.suppressed
    for summary in limiter.summaries(10_000.0, final=True):
        counted += summary.suppressed
    assert counted == len(events)  # nothing under-counted: each refusal is in a row or a summary
    assert all(rows <= limiter.max_rows_per_window for rows in rows_by_window.values()), rows_by_window


def test_the_default_bound():
    assert MAX_ROWS_PER_WINDOW == KeylessRefusalLimiter().max_rows_per_window == 67


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_log_budget_logs_its_lines_then_says_how_many_it_left_out(caplog):
    clock = FakeClock(1.0)
    budget = LogBudget(per_window=3, clock=clock)
    logger = logging.getLogger("keybrake.test")
    with caplog.at_level(logging.INFO, logger="keybrake.test"):
        logged = [budget.log(logger, logging.WARNING, "refused %d", i) for i in range(100)]
        clock.now = WINDOW_S + 1
        budget.log(logger, logging.WARNING, "refused %d", 100)
    assert logged == [True] * 3 + [False] * 97
    assert [r.getMessage() for r in caplog.records] == [
        "refused 0", "refused 1", "refused 2",
        "keybrake: 97 log lines like the next one were left out (at most 3 per 60 s)", "refused 100"]


class RecordingLedger:
    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def record_refusal(self, call, refusal, key=None, *, summary=False) -> None:
        self.rows.append((call, refusal, key, summary))


def test_the_audit_writes_rows_then_summary_rows_with_a_log_line_each(caplog):
    ledger, clock = RecordingLedger(), FakeClock(10.0)
    audit = KeylessAudit(ledger, clock=clock)
    call = CallFacts("stripe", "GET", "/v1/balance", None, utc_now())
    refusal = Refusal(RefusalKind.UNKNOWN_KEY, "This is not a Keybrake vault key.")
    with caplog.at_level(logging.WARNING, logger="keybrake"):
        written = [audit.refused(call, refusal, "127.0.0.1") for _ in range(25)]
        clock.now = WINDOW_S + 0.1
        audit.flush()
    assert written == [True] * ROWS_PER_ADDRESS + [False] * 15
    assert [summary for *_, summary in ledger.rows] == [False] * ROWS_PER_ADDRESS + [True]
    summary_call, summary_refusal, _, _ = ledger.rows[-1]
    assert (summary_call.vendor, summary_call.method, summary_call.path) == ("stripe", "*", "*")
    assert "15 more refusals" in summary_refusal.message
    (line,) = caplog.records
    assert "15 more refusals" in line.getMessage() and "127.0.0.1" in line.getMessage()


def test_a_revoked_keys_rows_keep_the_key():
    ledger = RecordingLedger()
    key = object.__new__(KeyRecord)
    KeylessAudit(ledger).refused(CallFacts("stripe", "GET", "/v1/balance", None, utc_now()),
                                 Refusal(RefusalKind.KEY_REVOKED, "revoked"), "127.0.0.1", key)
    assert ledger.rows[0][2] is key
