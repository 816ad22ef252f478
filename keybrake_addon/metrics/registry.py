"""Every series Keybrake exports, on one CollectorRegistry per proxy process (never the global one).

Label values come from fixed sets only: `vendor` from the vendor registry, `decision` from
"allowed" and the refusal codes, and a few small enums. A key id, a run label, a path or
anything else a client chooses never becomes a label value: each distinct value is a new series
kept for the life of the process, so those would grow without bound (and could carry secrets).

Counters and histograms are this process's own; in a fleet, sum them over replicas. Money and
reservation gauges come from the ledger (ledger_totals.py), so every replica reports the same
installation-wide totals: aggregate those with max(), not sum().
"""

import platform
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics
from prometheus_client.exposition import choose_encoder

from .. import __version__
from ..vendors import VENDORS
from ..vendors.base import RefusalKind

ALLOWED = "allowed"
DECISIONS = (ALLOWED, *(kind.code for kind in RefusalKind))  # the audit trail's own decision values
CAPS = {RefusalKind.CAP_EXCEEDED: "usd", RefusalKind.MAX_CALLS_EXCEEDED: "calls"}
GATE_OUTCOMES = ("forwarded", "refused")
LEDGER_MODES = ("inline", "batch")  # SQLite's on-loop transaction, or a group commit on the ledger thread
# Alert deliveries: an attempt went through, an attempt failed (it will be retried), or an event
# was given up after its last retry. Nothing delivers alerts yet: the alerts feature will count
# here, so the series and its dashboards exist before it does.
ALERT_DELIVERY_RESULTS = ("delivered", "failed", "abandoned")

# The gate answers in a fraction of a millisecond when the ledger is idle; a busy or remote
# ledger takes milliseconds; DECISION_TIMEOUT_S (6 s) bounds it.
# No `*_created` twin of every counter and histogram: it doubles the text and Prometheus does not
# need it. (A process-wide switch of prometheus-client; only the proxy process imports this.)
disable_created_metrics()

GATE_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 6.0)
LEDGER_BUCKETS_S = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class Metrics:
    """The proxy's series. Observing is a dict lookup and a locked add: cheap on the request path."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        vendors = sorted(VENDORS)
        requests = Counter("keybrake_requests", "Vendor calls the gate decided, by vendor and decision "
                           "(allowed, or the refusal code the client saw).", ["vendor", "decision"],
                           registry=self.registry)
        cap_hits = Counter("keybrake_cap_hits", "Vendor calls refused because a cap was reached "
                           "(cap: usd for a daily or total USD cap, calls for max_calls).", ["vendor", "cap"],
                           registry=self.registry)
        gate = Histogram("keybrake_gate_latency_seconds", "Time Keybrake adds before a vendor call is forwarded "
                         "or refused: key check, pricing, the ledger's admit, opening the secret.",
                         ["vendor", "outcome"], buckets=GATE_BUCKETS_S, registry=self.registry)
        ledger = Histogram("keybrake_ledger_transaction_seconds", "Time of one ledger write transaction "
                           "(admits, settlements and refusal rows), by mode: inline (SQLite, on the event loop, "
                           "when the ledger is idle) or batch (group commit on the ledger thread).",
                           ["mode"], buckets=LEDGER_BUCKETS_S, registry=self.registry)
        alerts = Counter("keybrake_alert_deliveries", "Alert webhook deliveries by result (delivered, failed "
                         "and retried later, abandoned after the last retry).", ["result"], registry=self.registry)
        self.in_flight = Gauge("keybrake_calls_in_flight", "Vendor calls forwarded and not yet answered.",
                               registry=self.registry)
        self.settlements_queued = Gauge("keybrake_settlements_queued", "Settlements waiting to be written to the "
                                        "ledger (their holds stay counted meanwhile).", registry=self.registry)
        Info("keybrake_build", "The running Keybrake.", registry=self.registry).info(
            {"version": __version__, "python": platform.python_version(), "mitmproxy": _mitmproxy_version()})
        # Every child made up front: a series exists (at 0) before its first event, so rate() and
        # alert rules see it, and the request path never creates one.
        self._requests = {(v, d): requests.labels(v, d) for v in vendors for d in DECISIONS}
        self._cap_hits = {(v, kind): cap_hits.labels(v, cap) for v in vendors for kind, cap in CAPS.items()}
        self._gate = {(v, o): gate.labels(v, o) for v in vendors for o in GATE_OUTCOMES}
        self._ledger = {mode: ledger.labels(mode) for mode in LEDGER_MODES}
        self._alerts = {result: alerts.labels(result) for result in ALERT_DELIVERY_RESULTS}

    def vendor_call(self, vendor: str, refused_as: RefusalKind | None, seconds: float) -> None:
        """One gate decision: `refused_as` None means forwarded."""
        decision = ALLOWED if refused_as is None else refused_as.code
        self._requests[vendor, decision].inc()
        if refused_as in CAPS:
            self._cap_hits[vendor, refused_as].inc()
        self._gate[vendor, "forwarded" if refused_as is None else "refused"].observe(seconds)

    def ledger_transaction(self, mode: str, seconds: float) -> None:
        """Called from the ledger thread as well as the event loop: prometheus-client locks."""
        self._ledger[mode].observe(seconds)

    def alert_delivery(self, result: str) -> None:
        if result not in self._alerts:
            raise ValueError(f"an alert delivery result is one of {', '.join(ALERT_DELIVERY_RESULTS)}; got {result!r}")
        self._alerts[result].inc()

    def watch(self, *, in_flight: Callable[[], float], settlements_queued: Callable[[], float]) -> None:
        """Gauges read at scrape time from the proxy's own state."""
        self.in_flight.set_function(in_flight)
        self.settlements_queued.set_function(settlements_queued)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (Prometheus text, or OpenMetrics when `accept` asks) and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def _mitmproxy_version() -> str:
    try:
        from mitmproxy.version import VERSION
    except ImportError:  # the metrics are usable without the proxy (tests, tools)
        return "none"
    return VERSION
