"""The alert deliverer: one thread per proxy process, sending what the outbox holds.

It never runs on the vendor-call path: it polls the ledger (a read, no write lock) every
POLL_INTERVAL_S, claims one due delivery at a time (alert_store.claim_due: PostgreSQL's `SKIP
LOCKED`, SQLite's write lock; a lease keeps other deliverers off it), sends it, and records the
attempt. A failed attempt is retried after 30 s, then twice as long each time up to an hour, for
24 hours; then the delivery is `failed` until someone retries it by hand. Every bit of that state
is in the ledger, so a restart (or another replica) carries on where this one stopped.

It also writes the ledger outages this process saw (ledger/outages.py) once the ledger answers.
"""

import logging
import secrets
import socket
import threading
from datetime import UTC, datetime

from ..ledger import alert_store
from ..ledger.alert_events import TEST, AlertEvent
from ..ledger.alert_store import AttemptResult, Claimed
from ..ledger.base import LedgerBusy, LedgerUnavailable
from ..ledger.outages import OutageWatch
from ..ledger.times import to_text
from ..vault.crypto import MasterKeyError
from .sending import send
from .subscriptions import delivery_url, seal_plain_urls, signing_secret

logger = logging.getLogger("keybrake")

POLL_INTERVAL_S = 1.0
MOST_PER_ROUND = 50  # deliveries sent before the next poll (and outage check)
RESULTS = ("delivered", "retrying", "failed", "cancelled")


class DeliveryCounts:
    """This process's delivery attempts by result, for metrics ("alert deliveries by result"):
    delivered; retrying (failed, another attempt is scheduled); failed (gave up after 24 h);
    cancelled (the subscription was removed). `listeners` are called with each result."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(RESULTS, 0)
        self.listeners: list = []

    def add(self, result: str) -> None:
        with self._lock:
            self._counts[result] += 1
        for listener in self.listeners:
            listener(result)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


DELIVERY_RESULTS = DeliveryCounts()


def attempt(ledger, master_key: bytes, claimed: Claimed, **send_options) -> dict | None:
    """Send one claimed delivery and record the attempt; returns the delivery as recorded."""
    subscription = claimed.subscription
    if subscription is None or subscription.removed_at is not None:
        alert_store.cancel_claimed(ledger, claimed, "the subscription was removed")
        DELIVERY_RESULTS.add("cancelled")
        return None
    try:
        secret, url = signing_secret(master_key, subscription), delivery_url(master_key, subscription)
    except MasterKeyError:
        result = AttemptResult(False, None, "cannot open the signing secret or the URL: the master key is not the "
                                            "one they were sealed with")
    else:
        result = send(url, allow_private=subscription.allow_private, secret=secret,
                      event_id=claimed.event_id, payload=claimed.payload, fmt=subscription.format, **send_options)
    recorded = alert_store.record_attempt(ledger, claimed, result)
    if recorded is not None:
        DELIVERY_RESULTS.add({"delivered": "delivered", "failed": "failed"}.get(recorded["state"], "retrying"))
    if not result.delivered:
        # The delivery's id only: the URL can carry a secret (a Slack webhook's path).
        logger.warning("keybrake: alert delivery %s (%s to %s) failed: %s", claimed.id, claimed.kind,
                       subscription.id, result.error)
    return recorded


def deliver_due(ledger, master_key: bytes, *, most: int = MOST_PER_ROUND, **send_options) -> int:
    """Send due deliveries until none is due (or `most`); returns how many were attempted."""
    sent = 0
    while sent < most and alert_store.has_due(ledger):
        claimed = alert_store.claim_due(ledger)
        if claimed is None:
            break  # another deliverer took it
        attempt(ledger, master_key, claimed, **send_options)
        sent += 1
    return sent


def write_outages(ledger, outages: OutageWatch, run_id: str, host: str) -> None:
    finished = outages.take_finished()
    for index, outage in enumerate(finished):
        try:
            alert_store.record_outage(ledger, run_id, host, outage.started, outage.ended, outage.reason)
        except LedgerUnavailable:
            outages.put_back(finished[index:])
            raise


class Deliverer:
    def __init__(self, ledger, master_key: bytes, *, run_id: str, outages: OutageWatch | None = None,
                 interval_s: float = POLL_INTERVAL_S) -> None:
        self._ledger = ledger
        self._master_key = master_key
        self._run_id = run_id
        self._host = socket.gethostname()
        self.outages = outages or OutageWatch()
        self._interval_s = interval_s
        self._stopping = threading.Event()
        self._urls_sealed = False  # a release before stored receivers' URLs whole: sealed at the first round
        self._thread = threading.Thread(target=self._run, name="keybrake-alerts", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval_s):
            self.round()

    def round(self) -> None:
        try:
            if not self._urls_sealed:
                seal_plain_urls(self._ledger, self._master_key)
                self._urls_sealed = True
            write_outages(self._ledger, self.outages, self._run_id, self._host)
            deliver_due(self._ledger, self._master_key)
        except LedgerBusy:
            pass  # another writer holds the lock a moment: the next round
        except LedgerUnavailable as error:
            self.outages.failed(error, writing=False)  # noticed even when no vendor call is made
            return
        except Exception:  # noqa: BLE001 - the thread must outlive one bad round
            logger.exception("keybrake: the alert deliverer's round failed; it tries again")
            return
        self.outages.answered(writing=False)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)


# --- by hand: `keybrake alerts test` and `deliveries retry` (and the same in the API) ---------------

def retry_by_hand(ledger, master_key: bytes, delivery_id: str, **send_options) -> dict | None:
    """Send one delivery now, whatever its schedule or state (pending or failed). Raises
    LookupError for no such delivery, ValueError for one that cannot be retried."""
    return attempt(ledger, master_key, alert_store.claim_by_hand(ledger, delivery_id), **send_options)


def send_test(ledger, master_key: bytes, subscription_id: str, **send_options) -> tuple[str, AttemptResult]:
    """POST an `alert.test` event to one subscription now, signed like every other. Not written
    to the outbox: it is not retried. Returns the event id and the result. Raises LookupError."""
    subscription = alert_store.subscription(ledger, subscription_id)
    if subscription is None or subscription.removed_at is not None:
        raise LookupError(f"no alert subscription {subscription_id}")
    now = datetime.now(UTC)
    event = AlertEvent(TEST, f"{TEST}/{subscription_id}/{secrets.token_hex(8)}", now,
                       {"subscription_id": subscription_id, "at": to_text(now),
                        "message": "a test event from `keybrake alerts test`: this receiver gets Keybrake's alerts"})
    result = send(delivery_url(master_key, subscription), allow_private=subscription.allow_private,
                  secret=signing_secret(master_key, subscription), event_id=event.id, payload=event.payload(),
                  fmt=subscription.format, **send_options)
    return event.id, result
