"""Durations ("90s", "90m", "2h", "1d") and "since" times, as the CLI and the API take them."""

import re
from datetime import UTC, datetime, timedelta, timezone

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$", re.ASCII)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
LONGEST = timedelta(days=3650)  # past this a TTL or a look-back is a typo (and Python's dates overflow)
_MOST_DIGITS = len(str(int(LONGEST.total_seconds())))  # more is over LONGEST in any unit (and cheap to refuse)
# RFC 3339's date-time (section 5.6), the `format: date-time` of JSON Schema and OpenAPI.
_RFC3339 = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
                      r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))")
_RFC3339_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_EARLIEST, _LATEST = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)


class InvalidDuration(ValueError):
    pass


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(text or "")
    digits = match[1].lstrip("0") if match else ""
    if not digits:
        raise InvalidDuration(f"expected a positive duration like 90s, 90m, 2h or 1d, got {text!r}")
    if len(digits) > _MOST_DIGITS or int(digits) * _SECONDS[match[2]] > LONGEST.total_seconds():
        raise InvalidDuration(f"at most {LONGEST.days}d, got {text.strip()[:40]!r}")
    return timedelta(**{_UNITS[match[2]]: int(digits)})


def parse_since(text: str) -> datetime:
    """An ISO 8601 time (UTC unless it says otherwise) or a duration back from now. A look-back
    longer than LONGEST, or a time before year 1 once in UTC, is the earliest time: every row."""
    now = datetime.now(UTC)
    match = _DURATION.match(text or "")
    if match and match[1].strip("0"):  # "0h" is no duration
        try:
            return now - parse_duration(text)
        except InvalidDuration:
            return _EARLIEST  # a look-back that long reaches before any row
    if (moment := parse_rfc3339(text)) is not None:
        return moment
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"expected an ISO time or a duration like 2h, got {text[:60]!r}") from None
    return _in_utc(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def parse_rfc3339(text: str) -> datetime | None:
    """An RFC 3339 date-time in UTC, or None when `text` is not one. A leap second (:60) is the
    second before it; a time out of Python's range once in UTC is its first or last moment."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(match[i]) for i in range(1, 7))
    micros = int((match[7] or ".0")[1:7].ljust(6, "0"))
    offset_hours, offset_minutes = (int(match[9]), int(match[10])) if match[8] else (0, 0)
    if second > 60 or offset_hours > 23 or offset_minutes > 59:
        return None
    try:
        offset = timedelta(hours=offset_hours, minutes=offset_minutes) * (-1 if match[8] == "-" else 1)
        moment = datetime(year, month, day, hour, minute, min(second, 59), micros, tzinfo=timezone(offset))
    except ValueError:  # month 13, February 30th, hour 24...
        return None
    return _in_utc(moment)


def parse_rfc3339_date(text: str) -> datetime | None:
    """An RFC 3339 full-date (`2025-01-31`) as its midnight UTC, or None when `text` is not one."""
    if _RFC3339_DATE.fullmatch(text) is None:
        return None
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    except ValueError:  # month 13, February 30th...
        return None


def _in_utc(moment: datetime) -> datetime:
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # year 1 east of UTC, or 9999 west of it
        return _EARLIEST if moment.year == 1 else _LATEST
