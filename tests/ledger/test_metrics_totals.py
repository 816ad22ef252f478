"""SqlLedger.metrics_totals, on both backends: what the Prometheus money and hold series report."""

from datetime import timedelta

from keybrake_addon.ledger.base import Resolution

from .conftest import USD, admit, settle, spec, with_key

TWILIO_HASH = "t" * 64


def test_totals_per_vendor_from_the_keys_counters_and_the_open_holds(ledger, clock):
    ledger.put_secret("twilio", "default", b"n" * 12, b"sealed", "fp", "AC" + "0" * 32)
    with_key(ledger, total=500 * USD)
    ledger.create_key("kbk_revoked", "r" * 64, spec(total=USD))
    ledger.revoke_key("kbk_revoked")
    ledger.create_key("kbk_expired", "e" * 64, spec(total=USD, expires_at=clock.now + timedelta(minutes=1)))
    ledger.create_key("kbk_sms", TWILIO_HASH, spec(vendor="twilio", total=100 * USD))
    ledger.register_run("run-alive", 1, "host")

    settled = admit(ledger, 50, run_id="run-alive")
    settle(ledger, settled, Resolution.SETTLE, 45, "pi_1")
    admit(ledger, 20, run_id="run-alive")  # pending, its run beating: open, not unknown
    died = admit(ledger, 30, run_id="run-alive")
    settle(ledger, died, Resolution.UNKNOWN)  # a 5xx: unknown
    orphan = admit(ledger, 5)  # no run recorded it: nobody will settle it, unknown
    assert orphan.allowed
    released = admit(ledger, 10, run_id="run-alive")
    settle(ledger, released, Resolution.RELEASE)
    clock.advance(minutes=2)  # kbk_expired is now expired
    ledger.beat("run-alive")

    totals = ledger.metrics_totals()
    assert totals["stripe"] == {
        "active_keys": 1, "spent_micros": 45 * USD, "spent_today_micros": 45 * USD,
        "reserved_micros": 55 * USD, "open_reservations": 3, "unknown_reservations": 2, "unknown_micros": 35 * USD}
    assert totals["twilio"] == {
        "active_keys": 1, "spent_micros": 0, "spent_today_micros": 0, "reserved_micros": 0,
        "open_reservations": 0, "unknown_reservations": 0, "unknown_micros": 0}
    assert "resend" not in totals  # no key: the collector reports 0 for it


def test_spend_today_starts_at_zero_on_a_new_utc_day(ledger, clock):
    with_key(ledger, total=500 * USD)
    settle(ledger, admit(ledger, 50), Resolution.SETTLE, 50, "pi_1")
    assert ledger.metrics_totals()["stripe"]["spent_today_micros"] == 50 * USD
    clock.advance(days=1)
    totals = ledger.metrics_totals()["stripe"]
    assert (totals["spent_micros"], totals["spent_today_micros"]) == (50 * USD, 0)


def test_a_pending_hold_of_a_run_that_stopped_beating_is_unknown(ledger, clock):
    with_key(ledger, total=500 * USD)
    ledger.register_run("run-gone", 1, "host")
    admit(ledger, 20, run_id="run-gone")
    assert ledger.metrics_totals()["stripe"]["unknown_reservations"] == 0
    clock.advance(minutes=5)  # no heartbeat since
    assert ledger.metrics_totals()["stripe"]["unknown_reservations"] == 1


def test_the_open_holds_have_an_index_of_their_own(ledger):
    with ledger.database.reading() as tx:
        if ledger.backend == "sqlite":
            found = " ".join(str(tuple(row)) for row in tx.rows(
                "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM reservations r JOIN vault_keys k ON k.key_id = r.key_id "
                "WHERE r.state IN ('pending', 'unknown')"))  # the planner picks it
        else:  # PostgreSQL's planner scans a tiny table whole: check the index is there, partial
            found = tx.row("SELECT indexdef FROM pg_indexes WHERE indexname = 'reservations_open'")["indexdef"]
            assert "WHERE" in found and "pending" in found and "unknown" in found
    assert "reservations_open" in found
