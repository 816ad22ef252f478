"""`since` times and durations at their edges: what the vault API's description lets through must
never overflow Python's dates or its int() (a 500), and RFC 3339 is read whole."""

from datetime import UTC, datetime

import pytest

from keybrake_addon.durations import InvalidDuration, parse_duration, parse_rfc3339, parse_rfc3339_date, parse_since

EARLIEST, LATEST = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)


@pytest.mark.parametrize("text, moment", [
    ("2025-01-31T09:00:00Z", datetime(2025, 1, 31, 9, tzinfo=UTC)),
    ("2025-01-31t09:00:00z", datetime(2025, 1, 31, 9, tzinfo=UTC)),  # RFC 3339 allows lower case
    ("2025-01-31T09:00:00.123456789+02:00", datetime(2025, 1, 31, 7, 0, 0, 123456, tzinfo=UTC)),
    ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, tzinfo=UTC)),  # a leap second
    ("0001-01-01T00:00:00+14:00", EARLIEST),  # before year 1 once in UTC
    ("9999-12-31T23:59:59-23:59", LATEST),  # after 9999 once in UTC
])
def test_rfc3339_date_times(text, moment):
    assert parse_rfc3339(text) == moment


@pytest.mark.parametrize("text", ["2024-01-01T12:99:00Z", "2024-02-30T00:00:00Z", "2024-01-01 00:00:00Z",
                                  "2024-01-01T00:00:00", "2024-01-01T00:00:00+24:00", "2024-01-01T00:00:61Z",
                                  "２０２４-01-01T00:00:00Z", "2024-01-01"])
def test_what_is_no_rfc3339_date_time(text):
    assert parse_rfc3339(text) is None


def test_rfc3339_dates():
    assert parse_rfc3339_date("2025-01-31") == datetime(2025, 1, 31, tzinfo=UTC)
    assert parse_rfc3339_date("2024-02-30") is None and parse_rfc3339_date("20250131") is None


def test_a_look_back_past_pythons_dates_is_every_row():
    assert parse_since("99999999999999d") == EARLIEST
    assert parse_since("1" * 5000 + "s") == EARLIEST  # int() refuses over 4300 digits: never reached


def test_a_duration_of_thousands_of_digits_is_too_long_not_a_crash():
    with pytest.raises(InvalidDuration, match="at most 3650d"):
        parse_duration("1" * 5000 + "d")
    assert parse_duration("0" * 5000 + "2h").total_seconds() == 7200
