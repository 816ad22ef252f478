"""How the dashboard shows money, times and shares of a cap (Jinja2 filters)."""

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

from ...ledger.times import from_text
from ...text import visible

MICROS_PER_USD = Decimal(1_000_000)


def usd(micros: int | None) -> str:
    """Dollars with cents, and more digits only when a sub-cent price (an SMS) needs them."""
    if micros is None:
        return "—"
    value = Decimal(abs(int(micros))) / MICROS_PER_USD
    text = f"{value:,.2f}" if micros % 10_000 == 0 else f"{value:,.6f}".rstrip("0")
    return ("-$" if micros < 0 else "$") + text


def cents(micros: int | None) -> str:
    """A total in dollars and cents ($50.10 for $50.0993): what a summary shows; `usd` is exact."""
    if micros is None:
        return "—"
    value = (Decimal(abs(int(micros))) / MICROS_PER_USD).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return ("-$" if micros < 0 else "$") + f"{value:,.2f}"


def moment(value: str | datetime | None) -> datetime | None:
    if value is None or value == "":
        return None
    return (from_text(value) if isinstance(value, str) else value).astimezone(UTC)


def utc(value: str | datetime | None, seconds: bool = True) -> str:
    """"2026-12-02 14:03:11" (the page says once that times are UTC)."""
    at = moment(value)
    if at is None:
        return "—"
    return at.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def iso(value: str | datetime | None) -> str:
    at = moment(value)
    return "" if at is None else at.strftime("%Y-%m-%dT%H:%M:%SZ")


def share(used: int, cap: int | None) -> int:
    """The used share of a cap in whole percent, 0..100 for a bar (over 100 shows as 100)."""
    if not cap:
        return 0
    return max(0, min(100, round(100 * used / cap)))


def tone(used: int, cap: int | None) -> str:
    """The colour of a bar: fine, near the cap (80 %), at it."""
    if not cap:
        return "none"
    ratio = used / cap
    return "over" if ratio >= 1 else "near" if ratio >= 0.8 else "ok"


def shown(text: str | None) -> str:
    """A stranger's text (a path, a label) with control characters made visible."""
    return "—" if text is None else visible(str(text))


def duration(ms: float | None) -> str:
    if ms is None:
        return "—"
    return f"{ms:,.0f} ms" if ms >= 10 else f"{ms:.1f} ms"


FILTERS = {"usd": usd, "cents": cents, "utc": utc, "iso": iso, "share": share, "tone": tone, "shown": shown, "duration": duration}
