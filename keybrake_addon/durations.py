"""Durations ("90s", "90m", "2h", "1d") and "since" times, as the CLI and the API take them."""

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
LONGEST = timedelta(days=3650)  # past this a TTL or a look-back is a typo (and Python's dates overflow)


class InvalidDuration(ValueError):
    pass


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(text or "")
    if not match or int(match[1]) == 0:
        raise InvalidDuration(f"expected a positive duration like 90s, 90m, 2h or 1d, got {text!r}")
    if int(match[1]) * _SECONDS[match[2]] > LONGEST.total_seconds():
        raise InvalidDuration(f"at most {LONGEST.days}d, got {text!r}")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def parse_since(text: str) -> datetime:
    """An ISO 8601 time (UTC unless it says otherwise) or a duration back from now."""
    try:
        return datetime.now(UTC) - parse_duration(text)
    except InvalidDuration:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"expected an ISO time or a duration like 2h, got {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
