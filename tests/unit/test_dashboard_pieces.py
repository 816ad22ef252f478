"""The dashboard's pure pieces: money and time on screen, the runs tree, filters, CSV, chart data."""

import csv
import io
import json
from datetime import UTC, datetime

import pytest

from keybrake_addon.cli.audit import AUDIT_COLUMNS
from keybrake_addon.ledger.dashboard_reads import SpendPoint
from keybrake_addon.listener.dashboard import charts
from keybrake_addon.listener.dashboard.audit_filters import CSV_COLUMNS, csv_header, csv_rows, parse_filters
from keybrake_addon.listener.dashboard.formatting import cents, usd, utc
from keybrake_addon.listener.dashboard.runs_tree import breadcrumbs


@pytest.mark.parametrize(("micros", "exact", "rounded"), [
    (0, "$0.00", "$0.00"), (12_500_000, "$12.50", "$12.50"), (7_900, "$0.0079", "$0.01"),
    (1_234_567_890_000, "$1,234,567.89", "$1,234,567.89"), (50_099_300, "$50.0993", "$50.10"),
    (-2_000_000, "-$2.00", "-$2.00"), (None, "—", "—")])
def test_money_is_dollars_with_cents(micros, exact, rounded):
    assert (usd(micros), cents(micros)) == (exact, rounded)


def test_times_are_shown_in_utc():
    assert utc("2026-12-02T14:03:11.123456Z") == "2026-12-02 14:03:11"
    assert utc(datetime(2026, 12, 2, 15, 3, tzinfo=UTC).astimezone(), seconds=False) == "2026-12-02 15:03"


def test_breadcrumbs_walk_back_up_a_label_prefix():
    assert breadcrumbs("") == []
    assert breadcrumbs("trigger.dev/billing-agent/") == [("trigger.dev/", "trigger.dev/"),
                                                          ("billing-agent/", "trigger.dev/billing-agent/")]


def test_the_csv_has_the_clis_columns_and_neutralises_formulas():
    assert CSV_COLUMNS == AUDIT_COLUMNS
    row = {"id": 1, "ts": "2026-12-02T14:00:00Z", "key_id": "kbk_1", "label": "=HYPERLINK(\"http://x\")",
           "vendor": "stripe", "method": "POST", "path": "/v1/payment_intents", "status": 200, "decision": "allowed",
           "outcome": "settled", "reserved_micros": 1_000_000, "actual_micros": -500_000, "amount_minor": 100,
           "currency": "usd", "object_id": "pi_1", "idempotency_key": "@SUM(A1)", "vendor_request_id": None,
           "duration_ms": 12.5, "replayed": 0}
    parsed = list(csv.DictReader(io.StringIO(csv_header() + csv_rows([row]))))
    assert parsed[0]["label"] == "'=HYPERLINK(\"http://x\")" and parsed[0]["idempotency_key"] == "'@SUM(A1)"
    assert (parsed[0]["reserved_usd"], parsed[0]["actual_usd"]) == ("1.00", "-0.50")  # a number stays a number


def test_audit_filters_are_checked_and_bounded():
    filters = parse_filters({"label": "x" * 5000, "decision": "nonsense", "since": "yesterday",
                             "until": "2026-12-02T14:00", "after": "12@not-a-time"})
    assert len(filters.query.label) == 512
    assert filters.query.decision is None and filters.query.since is None and filters.after is None
    assert filters.query.until == datetime(2026, 12, 2, 14, tzinfo=UTC)
    assert len(filters.errors) == 3
    ok = parse_filters({"decision": "cap_hit", "since": "2026-12-02T10:00:00Z", "after": "42@2026-12-02T10:00:00.000000Z"})
    assert (ok.query.decision, ok.query.since, ok.after.id, ok.errors) == (
        "cap_hit", datetime(2026, 12, 2, 10, tzinfo=UTC), 42, [])


def test_chart_data_fills_every_hour_and_cannot_close_its_script_element():
    since, now = datetime(2026, 12, 2, 10, tzinfo=UTC), datetime(2026, 12, 2, 13, 30, tzinfo=UTC)
    chart = charts.hourly_spend(since, now, [SpendPoint("2026-12-02T11", "stripe", 2_500_000),
                                             SpendPoint("2026-12-02T13", "twilio", 7_900)])
    assert len(chart["x"]) == 4
    assert chart["series"] == [{"label": "stripe", "values": [0, 2.5, 0, 0]},
                               {"label": "twilio", "values": [0, 0, 0, 0.0079]}]
    hostile = charts.as_json({"label": "</script><script>alert(1)</script>"})
    assert "<" not in hostile and json.loads(hostile)["label"].startswith("</script>")
    steps = charts.cumulative_spend(since, now, [SpendPoint("2026-12-02T10:05", None, 1_000_000),
                                                 SpendPoint("2026-12-02T11:00", None, 2_000_000)], 5_000_000)
    assert steps["series"][0]["values"] == [0.0, 1.0, 3.0, 3.0] and steps["cap"] == 5.0
