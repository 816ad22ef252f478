"""The Prometheus series, parsed back with prometheus-client's own text parser."""

import asyncio

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from keybrake_addon.metrics import ledger_totals
from keybrake_addon.metrics.ledger_totals import LedgerTotals
from keybrake_addon.metrics.registry import ALERT_DELIVERY_RESULTS, DECISIONS, Metrics
from keybrake_addon.vendors import VENDORS
from keybrake_addon.vendors.base import RefusalKind

# Every label and the values it may take: nothing a client chooses.
BOUNDED_LABELS = {"vendor": set(VENDORS), "decision": set(DECISIONS), "cap": {"usd", "calls"},
                  "outcome": {"forwarded", "refused"}, "mode": {"inline", "batch"},
                  "result": set(ALERT_DELIVERY_RESULTS), "le": None, "version": None, "python": None,
                  "mitmproxy": None}


def samples(metrics: Metrics) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} from the rendered text."""
    text = metrics.render()[0].decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels) -> float:
    return found[name, tuple(sorted(labels.items()))]


def test_decisions_cap_hits_and_latency_are_counted_by_vendor():
    metrics = Metrics()
    metrics.vendor_call("stripe", None, 0.0004)
    metrics.vendor_call("stripe", None, 0.003)
    metrics.vendor_call("stripe", RefusalKind.CAP_EXCEEDED, 0.001)
    metrics.vendor_call("twilio", RefusalKind.MAX_CALLS_EXCEEDED, 0.001)
    metrics.vendor_call("resend", RefusalKind.UNKNOWN_KEY, 0.0001)
    found = samples(metrics)
    assert value(found, "keybrake_requests_total", vendor="stripe", decision="allowed") == 2
    assert value(found, "keybrake_requests_total", vendor="stripe", decision="keybrake_cap_exceeded") == 1
    assert value(found, "keybrake_requests_total", vendor="resend", decision="keybrake_unknown_key") == 1
    assert value(found, "keybrake_requests_total", vendor="twilio", decision="allowed") == 0  # there, at 0
    assert value(found, "keybrake_cap_hits_total", vendor="stripe", cap="usd") == 1
    assert value(found, "keybrake_cap_hits_total", vendor="twilio", cap="calls") == 1
    assert value(found, "keybrake_cap_hits_total", vendor="resend", cap="usd") == 0  # an unknown key is no cap hit
    assert value(found, "keybrake_gate_latency_seconds_count", vendor="stripe", outcome="forwarded") == 2
    assert value(found, "keybrake_gate_latency_seconds_bucket", vendor="stripe", outcome="forwarded", le="0.0005") == 1
    assert value(found, "keybrake_gate_latency_seconds_count", vendor="stripe", outcome="refused") == 1
    assert value(found, "keybrake_gate_latency_seconds_sum", vendor="stripe", outcome="forwarded") == \
        pytest.approx(0.0034)


def test_ledger_transactions_alerts_build_info_and_the_proxys_own_gauges():
    metrics = Metrics()
    metrics.ledger_transaction("inline", 0.0003)
    metrics.ledger_transaction("batch", 0.004)
    metrics.alert_delivery("delivered")
    metrics.watch(in_flight=lambda: 3, settlements_queued=lambda: 2)
    found = samples(metrics)
    assert value(found, "keybrake_ledger_transaction_seconds_count", mode="inline") == 1
    assert value(found, "keybrake_ledger_transaction_seconds_count", mode="batch") == 1
    assert value(found, "keybrake_alert_deliveries_total", result="delivered") == 1
    assert value(found, "keybrake_alert_deliveries_total", result="abandoned") == 0
    assert (value(found, "keybrake_calls_in_flight"), value(found, "keybrake_settlements_queued")) == (3, 2)
    [build] = [labels for (name, labels) in found if name == "keybrake_build_info"]
    assert dict(build)["version"] == "0.1.0"
    with pytest.raises(ValueError, match="delivered, failed, abandoned"):
        metrics.alert_delivery("label:run-1")  # a result outside the set never becomes a series


def test_every_label_value_comes_from_a_fixed_set():
    metrics = Metrics()
    for kind in RefusalKind:
        metrics.vendor_call("stripe", kind, 0.001)
    for (name, labels) in samples(metrics):
        for label, label_value in labels:
            assert label in BOUNDED_LABELS, (name, label)
            allowed = BOUNDED_LABELS[label]
            assert allowed is None or label_value in allowed, (name, label, label_value)


def test_each_proxy_has_its_own_registry_and_the_global_one_stays_clean():
    first, second = Metrics(), Metrics()
    first.vendor_call("stripe", None, 0.001)
    assert value(samples(second), "keybrake_requests_total", vendor="stripe", decision="allowed") == 0
    assert not [m for m in REGISTRY.collect() if m.name.startswith("keybrake")]
    assert not [name for (name, _) in samples(first) if name.endswith("_created")]


def test_openmetrics_when_the_scraper_asks_for_it():
    body, content_type = Metrics().render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")
    assert Metrics().render("")[1].startswith("text/plain")


TOTALS = {"stripe": {"active_keys": 2, "spent_micros": 45_500_000, "spent_today_micros": 5_000_000,
                     "reserved_micros": 55_000_000, "open_reservations": 3, "unknown_reservations": 2,
                     "unknown_micros": 35_000_000}}


class Reads:
    def __init__(self, answer=TOTALS) -> None:
        self.count, self.answer = 0, answer

    async def __call__(self):
        self.count += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        if self.answer == "hang":
            await asyncio.sleep(3600)
        return self.answer


def test_ledger_totals_are_read_at_scrape_time_and_cached():
    metrics, reads, now = Metrics(), Reads(), [100.0]
    totals = LedgerTotals(metrics, reads, clock=lambda: now[0])

    async def scrape():
        await totals.refresh()
        return samples(metrics)

    found = asyncio.run(scrape())
    assert value(found, "keybrake_ledger_up") == 1
    assert value(found, "keybrake_spend_usd", vendor="stripe") == 45.5
    assert value(found, "keybrake_spend_today_usd", vendor="stripe") == 5
    assert value(found, "keybrake_reserved_usd", vendor="stripe") == 55
    assert value(found, "keybrake_unknown_usd", vendor="stripe") == 35
    assert value(found, "keybrake_reservations_open", vendor="stripe") == 3
    assert value(found, "keybrake_reservations_unknown", vendor="stripe") == 2
    assert value(found, "keybrake_keys_active", vendor="stripe") == 2
    assert value(found, "keybrake_spend_usd", vendor="twilio") == 0  # no key yet: 0, not absent
    now[0] += ledger_totals.CACHE_S - 0.1
    asyncio.run(scrape())
    assert reads.count == 1
    now[0] += 0.2
    asyncio.run(scrape())
    assert reads.count == 2


@pytest.mark.parametrize("answer", [None, RuntimeError("password=hunter2 host=db.internal")])
def test_a_ledger_that_is_not_open_or_fails_is_down_and_reports_no_money(answer, caplog):
    metrics = Metrics()
    totals = LedgerTotals(metrics, Reads(answer))
    asyncio.run(totals.refresh())
    found = samples(metrics)
    assert value(found, "keybrake_ledger_up") == 0
    assert not [name for (name, _) in found if name.endswith("_usd") or name.startswith("keybrake_reservations")]
    assert "hunter2" not in caplog.text


def test_a_hanging_ledger_times_out_and_is_never_read_twice_at_once(monkeypatch):
    monkeypatch.setattr(ledger_totals, "READ_TIMEOUT_S", 0.05)
    metrics, reads, now = Metrics(), Reads("hang"), [0.0]
    totals = LedgerTotals(metrics, reads, clock=lambda: now[0])

    async def two_scrapes():
        await totals.refresh()
        now[0] += 60
        await totals.refresh()  # the first read still hangs: this scrape waits on it, starts none
        return samples(metrics)

    assert value(asyncio.run(two_scrapes()), "keybrake_ledger_up") == 0
    assert reads.count == 1
