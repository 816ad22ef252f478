"""A stranger's text that a database cannot store must not sink the batch it arrives in.

mitmproxy hands the gate a path or a header as it came: a NUL byte stays a NUL, and bytes that are
not UTF-8 become lone surrogates. PostgreSQL's text refuses NUL, and neither driver can encode a
lone surrogate. Written as sent, one such refusal row failed its whole batch: on PostgreSQL every
other call in it was refused with a 503, and on SQLite the batch raised an encoding error instead
of any answer. The audit keeps such text with U+FFFD in place of what cannot be stored.
"""

from datetime import UTC, datetime

from keybrake_addon.ledger.base import AdmitRequest, AuditFilter, CallFacts, Refusal, Resolution, SettleRequest
from keybrake_addon.ledger.store import Refused
from keybrake_addon.vendors.base import CostEstimate, PricingBasis, RefusalKind

from .conftest import KEY_HASH, USD, money, with_key

NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
UNSTORABLE = [("/v1/charges/nul\x00here", "idem\x00nul"), ("/v1/charges/\udcff\udcfe", "idem\udcffkey")]


def test_a_refusal_row_with_unstorable_text_does_not_sink_its_batch(ledger):
    with_key(ledger, total=100 * USD)
    good = AdmitRequest(KEY_HASH, CallFacts("stripe", "POST", "/v1/payment_intents", "fine", NOW),
                        CostEstimate(usd_micros=5 * USD))
    strangers = [Refused(CallFacts("stripe", "POST", path, idem, NOW),
                         Refusal(RefusalKind.INVALID_REQUEST, f"refused {path}"), None) for path, idem in UNSTORABLE]
    admissions, refusal_ids = ledger.apply_batch([good], [], strangers)
    assert admissions[0].allowed and money(ledger) == (0, 5)
    rows = {row["id"]: row for row in ledger.audit_rows(AuditFilter())}
    assert [(rows[i]["path"], rows[i]["idempotency_key"]) for i in refusal_ids] == [
        ("/v1/charges/nul\ufffdhere", "idem\ufffdnul"), ("/v1/charges/\ufffd\ufffd", "idem\ufffdkey")]
    assert rows[refusal_ids[0]]["message"] == "refused /v1/charges/nul\ufffdhere"


def test_an_object_reference_with_a_nul_is_looked_up_without_failing(ledger):
    """A refund names its PaymentIntent in the form the worker sends: that text reaches a query."""
    with_key(ledger, total=100 * USD)
    refund = AdmitRequest(KEY_HASH, CallFacts("stripe", "POST", "/v1/refunds", None, NOW),
                          CostEstimate(usd_micros=5 * USD, basis=PricingBasis.ALREADY_COUNTED, object_ref="pi_\x00\udcff"))
    admissions, _ = ledger.apply_batch([refund], [], [])
    assert admissions[0].refusal.kind is RefusalKind.UNPRICED  # nothing counted for it: a decision, not an error
    [row] = ledger.audit_rows(AuditFilter())
    assert "did not create pi_\ufffd\ufffd through Keybrake" in row["message"]


def test_a_vendors_answer_that_cannot_be_stored_as_sent_is_settled_all_the_same(ledger):
    """Object ids, the currency and the amount come from the vendor's JSON: a NUL, `true`, or more
    digits than a column holds must not roll back the settlement or its neighbours."""
    with_key(ledger, total=100 * USD)
    call = CallFacts("stripe", "POST", "/v1/payment_intents", None, NOW)
    first, second = ledger.apply_batch([AdmitRequest(KEY_HASH, call, CostEstimate(usd_micros=5 * USD))] * 2, [], [])[0]
    answers = [SettleRequest(first.audit_id, first.reservation_id, Resolution.SETTLE, 4 * USD, 200, ("pi_\x00one",),
                             "req_\x00", 10**20, "usd\x00" + "x" * 50, False, 1.0),
               SettleRequest(second.audit_id, second.reservation_id, Resolution.SETTLE, 3 * USD, 200, ("pi_two",),
                             None, True, None, False, 1.0)]
    ledger.apply_batch([], answers, [])
    assert money(ledger) == (7, 0)
    rows = {row["id"]: row for row in ledger.audit_rows(AuditFilter())}
    assert (rows[first.audit_id]["object_id"], rows[first.audit_id]["vendor_request_id"],
            rows[first.audit_id]["amount_minor"], rows[first.audit_id]["currency"]) == (
        "pi_\ufffdone", "req_\ufffd", None, "usd\ufffdxxx…")
    assert rows[second.audit_id]["amount_minor"] is None  # `true` is no amount
