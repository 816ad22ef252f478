"""Audit retention, label prefixes and the follower's queries, on each ledger backend.

`prune` deletes old rows and rolls their totals up: `spend` must not change, open and unknown
holds must survive, a dry run must change nothing.
"""

from datetime import UTC, datetime, timedelta

import pytest

from keybrake_addon.ledger import retention
from keybrake_addon.ledger.base import AuditFilter, CallFacts, Resolution
from keybrake_addon.vendors.base import Refusal, RefusalKind

from .conftest import OTHER_HASH, USD, admit, settle, spec

OLD = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
TODAY = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
NINETY_DAYS = timedelta(days=90)
GROUPS = ("key", "label", "vendor", "day")
TABLES = ("audit", "reservations", "vault_keys", "daily_totals")


def raw(ledger, table: str) -> list[dict]:
    order = "day, vendor, key_id" if table == "daily_totals" else "key_id" if table == "vault_keys" else "id"
    with ledger.database.reading() as tx:
        return [dict(row) for row in tx.rows(f"SELECT * FROM {table} ORDER BY {order}")]


def spend_everywhere(ledger, **where) -> dict:
    return {by: ledger.spend(by, AuditFilter(**where)) for by in GROUPS}


def keyless_refusal(ledger) -> None:
    ledger.record_refusal(CallFacts("stripe", "POST", "/v1/payment_intents", None, OLD),
                          Refusal(RefusalKind.MISSING_KEY, "no key"))


@pytest.fixture
def history(ledger, clock):
    """Two keys' calls over old days (settled, released, refused, a cap hit, keyless) and today's,
    plus holds that must outlive any prune: pending, unknown, settled at an estimate."""
    ledger.create_key("kbk_billing", "h" * 64, spec(total=200 * USD, label="jobs/billing"))
    ledger.create_key("kbk_mail", OTHER_HASH, spec(total=1000 * USD, label="jobs/mail"))
    held = {}
    for day in range(3):
        clock.set(OLD + timedelta(days=day))
        settle(ledger, admit(ledger, 20, key_hash="h" * 64), Resolution.SETTLE, 15, f"pi_{day}")
        settle(ledger, admit(ledger, 5, key_hash="h" * 64), Resolution.RELEASE)
        settle(ledger, admit(ledger, 7, key_hash=OTHER_HASH), Resolution.SETTLE, 7, f"pi_m{day}")
        keyless_refusal(ledger)
    clock.set(OLD + timedelta(days=3))
    admit(ledger, 500, key_hash="h" * 64)  # a cap hit
    held["pending"] = admit(ledger, 11, key_hash="h" * 64)  # never settled: a dead run's, so unknown
    held["unknown"] = admit(ledger, 13, key_hash=OTHER_HASH)
    settle(ledger, held["unknown"], Resolution.UNKNOWN)
    held["estimated"] = admit(ledger, 3, key_hash=OTHER_HASH)
    settle(ledger, held["estimated"], Resolution.SETTLE, None, "SM1")  # at the estimate: awaits a price check
    clock.set(TODAY)
    settle(ledger, admit(ledger, 2, key_hash="h" * 64), Resolution.SETTLE, 2, "pi_today")
    keyless_refusal(ledger)
    return held


def test_spend_is_the_same_after_a_prune(ledger, history):
    before = spend_everywhere(ledger)
    labelled = spend_everywhere(ledger, label_prefix="jobs/")
    report = retention.prune(ledger.database, NINETY_DAYS)
    assert report.audit_rows > 0 and report.reservations > 0
    assert report.document()["days_rolled_up"] == 4  # the three days and the cap hit's
    assert spend_everywhere(ledger) == before
    assert spend_everywhere(ledger, label_prefix="jobs/") == labelled
    assert spend_everywhere(ledger, key_id="kbk_billing") != {}
    # Pruning again finds nothing more and changes nothing.
    again = retention.prune(ledger.database, NINETY_DAYS)
    assert (again.audit_rows, again.reservations) == (0, 0)
    assert spend_everywhere(ledger) == before


def test_a_prune_keeps_open_unknown_and_estimated_holds_and_their_rows(ledger, history):
    kept = {name: admission.reservation_id for name, admission in history.items()}
    retention.prune(ledger.database, NINETY_DAYS)
    reservations = {row["id"]: row for row in raw(ledger, "reservations")}
    assert set(kept.values()) <= set(reservations)
    assert {row["id"] for row in ledger.open_reservations("kbk_billing")} == {kept["pending"]}
    assert {row["id"] for row in ledger.open_reservations("kbk_mail")} == {kept["unknown"]}
    audit_ids = {row["id"] for row in raw(ledger, "audit")}
    assert {history["pending"].audit_id, history["unknown"].audit_id} <= audit_ids
    # Only those rows and today's are left; the keys' counters (what caps read) did not move.
    old_left = [row for row in raw(ledger, "audit") if row["ts"] < "2026-11-28"]
    assert {row["reservation_id"] for row in old_left} == {kept["pending"], kept["unknown"]}
    billing = ledger.get_key("kbk_billing")
    assert (billing.spent_micros, billing.reserved_micros) == (3 * 15 * USD + 2 * USD, 11 * USD)


def test_a_pending_hold_settled_after_the_prune_still_counts(ledger, history, clock):
    before = spend_everywhere(ledger)
    retention.prune(ledger.database, NINETY_DAYS)
    settle(ledger, history["pending"], Resolution.SETTLE, 11, "pi_late")
    [billing] = [row for row in ledger.spend("key", AuditFilter()) if row["key"] == "kbk_billing"]
    [billing_before] = [row for row in before["key"] if row["key"] == "kbk_billing"]
    assert billing["spent_micros"] == billing_before["spent_micros"] + 11 * USD
    assert billing["reserved_micros"] == billing_before["reserved_micros"] - 11 * USD


def test_a_dry_run_changes_nothing_and_counts_what_a_prune_deletes(ledger, history):
    tables = {table: raw(ledger, table) for table in TABLES}
    dry = retention.prune(ledger.database, NINETY_DAYS, dry_run=True)
    assert {table: raw(ledger, table) for table in TABLES} == tables
    real = retention.prune(ledger.database, NINETY_DAYS)
    assert dry.document() == {**real.document(), "dry_run": True}


def test_only_whole_days_before_the_cutoff_go(ledger, history, clock):
    # 178 days back from TODAY is 2026-06-03, the third day: days one and two go, three stays.
    report = retention.prune(ledger.database, timedelta(days=178))
    assert sorted(report.days) == ["2026-06-01", "2026-06-02"]
    assert min(row["ts"] for row in raw(ledger, "audit"))[:10] == "2026-06-03"


def test_since_over_a_pruned_day_counts_that_whole_day(ledger, history):
    since = OLD + timedelta(days=1, hours=1)  # after that day's calls
    retention.prune(ledger.database, NINETY_DAYS)
    days = {row["day"] for row in ledger.spend("day", AuditFilter(since=since))}
    assert "2026-06-02" in days and "2026-06-01" not in days


def test_the_newest_row_of_a_table_is_never_pruned(ledger, clock):
    ledger.create_key("kbk_old", "h" * 64, spec(total=100 * USD))
    clock.set(OLD)
    settle(ledger, admit(ledger, 1, key_hash="h" * 64), Resolution.SETTLE, 1, "pi_1")
    settle(ledger, admit(ledger, 1, key_hash="h" * 64), Resolution.SETTLE, 1, "pi_2")
    clock.set(TODAY)
    retention.prune(ledger.database, NINETY_DAYS)
    # SQLite hands out MAX(id) + 1: with every row gone, ids would be handed out again.
    assert [row["id"] for row in raw(ledger, "audit")] == [2]
    assert [row["id"] for row in raw(ledger, "reservations")] == [2]
    fresh = admit(ledger, 1, key_hash="h" * 64)
    assert (fresh.audit_id, fresh.reservation_id) == (3, 3)


# --- label prefixes and the audit's order -------------------------------------------------------

@pytest.mark.parametrize(("prefix", "matching"), [
    ("a%b/", ["a%b/1"]),
    ("a_b/", ["a_b/1"]),
    ("a", ["a%b/1", "aXb/1", "a_b/1"]),
    ("A", ["A%b/1"]),  # case matters (SQLite's LIKE would ignore it)
    ("a%b/1", ["a%b/1"]),
])
def test_a_label_prefix_is_taken_literally(ledger, prefix, matching):
    labels = ["a%b/1", "a_b/1", "aXb/1", "A%b/1"]
    for number, label in enumerate(labels):
        key_hash = f"{number}" * 64
        ledger.create_key(f"kbk_{number}", key_hash, spec(total=100 * USD, label=label))
        settle(ledger, admit(ledger, 1, key_hash=key_hash), Resolution.SETTLE, 1, f"pi_{number}")
    assert sorted(row["label"] for row in ledger.audit_rows(AuditFilter(label_prefix=prefix))) == matching
    assert sorted(row["label"] for row in ledger.spend("label", AuditFilter(label_prefix=prefix))) == matching


def test_newest_first_and_rows_after_an_id(ledger):
    ledger.create_key("kbk_test", "h" * 64, spec(total=100 * USD))
    ids = [admit(ledger, 1, key_hash="h" * 64).audit_id for _ in range(5)]
    assert [r["id"] for r in ledger.audit_rows(AuditFilter(limit=2, newest_first=True))] == ids[:-3:-1]
    assert [r["id"] for r in ledger.audit_rows(AuditFilter(limit=2))] == ids[:2]
    after = ledger.audit_rows(AuditFilter(after_id=ids[3], also_ids=(ids[1],)))
    assert [r["id"] for r in after] == [ids[1], ids[4]]
