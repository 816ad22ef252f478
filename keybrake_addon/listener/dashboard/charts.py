"""What the pages' charts plot, as the data uPlot draws (dollars as numbers, times as Unix seconds).

The data rides in the page as a JSON script element that the browser never runs; the static
dashboard.js draws it. Amounts in a chart are for the eye: every figure in text is exact.
"""

import json
from datetime import UTC, datetime, timedelta

from ...ledger.dashboard_reads import SpendPoint

MICROS_PER_USD = 1_000_000


def hourly_spend(since: datetime, now: datetime, points: list[SpendPoint]) -> dict:
    """Spend per hour and vendor (the browser stacks them), every hour from `since` to now."""
    start = since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    hours = []
    moment = start
    while moment <= now:
        hours.append(moment)
        moment += timedelta(hours=1)
    index = {hour.strftime("%Y-%m-%dT%H"): i for i, hour in enumerate(hours)}
    vendors = sorted({p.vendor for p in points if p.vendor})
    values = {vendor: [0] * len(hours) for vendor in vendors}
    for point in points:
        if point.at in index and point.vendor in values:
            values[point.vendor][index[point.at]] += point.micros
    return {"kind": "hourly", "x": [int(h.timestamp()) for h in hours],
            "series": [{"label": vendor, "values": _dollars(values[vendor])} for vendor in vendors]}


def cumulative_spend(start: datetime, end: datetime, points: list[SpendPoint], cap_micros: int | None) -> dict:
    """Spend so far at each minute (or hour) that moved money, from `start` to `end`."""
    x, y, running = [int(start.timestamp())], [0.0], 0
    for point in points:
        at = _bucket_time(point.at)
        running += point.micros
        x.append(max(int(at.timestamp()), x[-1]))
        y.append(running / MICROS_PER_USD)
    if int(end.timestamp()) > x[-1]:
        x.append(int(end.timestamp()))
        y.append(running / MICROS_PER_USD)
    return {"kind": "cumulative", "x": x, "series": [{"label": "spent", "values": y}],
            "cap": None if cap_micros is None else cap_micros / MICROS_PER_USD}


def as_json(chart: dict) -> str:
    """For a <script type="application/json">: no "<", so nothing in it can end the element early."""
    return json.dumps(chart, separators=(",", ":")).replace("<", "\\u003c")


def _bucket_time(text: str) -> datetime:
    # "2026-12-02T14" (hour) or "2026-12-02T14:05" (minute)
    return datetime.fromisoformat(text + (":00" if len(text) == 13 else "")).replace(tzinfo=UTC)


def _dollars(micros: list[int]) -> list[float]:
    return [m / MICROS_PER_USD for m in micros]
