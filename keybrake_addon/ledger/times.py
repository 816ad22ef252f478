"""Timestamps as ISO 8601 UTC text: sortable in SQL, readable in the raw database."""

from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


def to_text(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_text(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def utc_day(moment: datetime) -> str:
    """The daily cap's bucket: caps reset at 00:00 UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d")
