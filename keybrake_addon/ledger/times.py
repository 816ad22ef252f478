"""Timestamps as ISO 8601 UTC text: sortable in SQL, readable in the raw database."""

from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


def to_text(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    # isoformat and fromisoformat are C fast paths; strftime/strptime cost ~50x more per call.
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def from_text(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def utc_day(moment: datetime) -> str:
    """The daily cap's bucket: caps reset at 00:00 UTC."""
    return moment.astimezone(UTC).date().isoformat()
