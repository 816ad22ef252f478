"""examples/grafana-dashboard.json and examples/prometheus-alerts.yml query series that exist."""

import asyncio
import json
import re
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from keybrake_addon.metrics.ledger_totals import LedgerTotals
from keybrake_addon.metrics.registry import ALERT_DELIVERY_RESULTS, DECISIONS, Metrics
from keybrake_addon.vendors import VENDORS

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LABEL_VALUES = {"vendor": set(VENDORS), "decision": set(DECISIONS), "cap": {"usd", "calls"},
                "outcome": {"forwarded", "refused"}, "mode": {"inline", "batch"}, "result": set(ALERT_DELIVERY_RESULTS)}
# Labels Prometheus adds at scrape time, and the histogram bucket bound.
OTHER_LABELS = {"le", "instance", "job"}


def exported_sample_names() -> set[str]:
    metrics = Metrics()

    async def totals():
        return {}

    collector = LedgerTotals(metrics, totals)
    asyncio.run(collector.refresh())
    text = metrics.render()[0].decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def expressions() -> list[str]:
    dashboard = json.loads((EXAMPLES / "grafana-dashboard.json").read_text())
    panel_exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    rules = yaml.safe_load((EXAMPLES / "prometheus-alerts.yml").read_text())["groups"][0]["rules"]
    assert all({"alert", "expr", "annotations"} <= rule.keys() for rule in rules)
    return panel_exprs + [rule["expr"] for rule in rules]


def test_every_series_the_examples_query_is_exported_and_every_family_is_shown():
    exported = exported_sample_names()
    unquoted = [re.sub(r'"[^"]*"', '""', expr) for expr in expressions()]  # label values are not series
    used = {name for expr in unquoted for name in re.findall(r"\bkeybrake_[a-z_]+", expr)}
    assert used and used <= exported, used - exported

    def family(name: str) -> str:
        return re.sub(r"_(total|bucket|count|sum)$", "", name)

    assert {family(name) for name in exported} == {family(name) for name in used}


def test_label_matchers_and_groupings_name_bounded_labels():
    for expr in expressions():
        for label, operator, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', expr):
            assert label in LABEL_VALUES or label in OTHER_LABELS, (label, expr)
            if operator in ("=", "!=") and label in LABEL_VALUES:
                assert value in LABEL_VALUES[label], (label, value, expr)
        for grouping in re.findall(r"\bby \(([^)]*)\)", expr):
            for label in (name.strip() for name in grouping.split(",")):
                assert label in LABEL_VALUES or label in OTHER_LABELS, (label, expr)
