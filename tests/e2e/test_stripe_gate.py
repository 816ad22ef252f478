"""The Stripe gate end to end: real proxy process, official stripe SDK, fake Stripe upstream."""

import glob
import json
import shutil
import ssl
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import stripe

from keybrake_addon.ledger.base import AuditFilter

from .helpers import REAL_SECRET, keybrake, keybrake_json, settled_key_json

BOTH_BACKENDS = True  # caps, retries, revoke and audit: each test runs on SQLite and on PostgreSQL

PI = {"amount": 5000, "currency": "usd", "confirm": True, "payment_method": "pm_card_visa"}


def test_happy_path_swaps_the_key_and_reports_spend(proxy, fake_stripe, stripe_client_for, issue, home):
    key = issue("--daily-usd-cap", "500", "--allow", "POST /v1/payment_intents", "--label", "run-happy")
    client = stripe_client_for(key["vault_key"])

    intent = client.v1.payment_intents.create(params=PI)

    assert intent.status == "succeeded"
    assert intent.last_response.headers["x-keybrake-key-id"] == key["key_id"]
    assert intent.last_response.headers["x-keybrake-spent-usd"] == "50.00"
    assert intent.last_response.headers["x-keybrake-remaining-usd"] == "450.00"
    (seen,) = fake_stripe.received
    assert seen.authorization == f"Bearer {REAL_SECRET}"
    assert not any(name.startswith("x-keybrake") for name in seen.headers)
    shown = settled_key_json(home, key["key_id"])
    assert (shown["spent_usd"], shown["reserved_usd"], shown["remaining_usd"]) == ("50.00", "0.00", "450.00")


def test_parallel_batch_stops_exactly_at_the_cap(proxy, fake_stripe, stripe_client_for, issue, home):
    key = issue("--daily-usd-cap", "475", "--allow", "POST /v1/payment_intents", "--label", "run-batch")
    client = stripe_client_for(key["vault_key"])

    def charge(_):
        try:
            return client.v1.payment_intents.create(params=PI)
        except stripe.RateLimitError as error:
            return error

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(charge, range(50)))

    succeeded = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, stripe.RateLimitError)]
    assert len(succeeded) == 9  # $475 / $50, rounded down
    assert len(refused) == 41
    assert all(r.headers.get("x-keybrake-cap-hit") == "true" for r in refused)
    assert "cap $475.00" in refused[0].user_message
    assert fake_stripe.money_moved_minor == 9 * 5000
    assert fake_stripe.hits == 9  # refused calls never reached the vendor
    shown = settled_key_json(home, key["key_id"])
    assert (shown["spent_usd"], shown["reserved_usd"]) == ("450.00", "0.00")
    spend = keybrake_json_format(home, "spend", "--label", "run-batch")
    assert spend == [{"label": "run-batch", "spent_usd": "450.00", "reserved_usd": "0.00", "calls": 50,
                      "allowed": 9, "refused": 41, "cap_hits": 41}]


def test_revoke_cuts_off_the_next_call(proxy, stripe_client_for, issue, home):
    key = issue("--total-usd-cap", "500", "--allow", "POST /v1/payment_intents", "--label", "run-revoke")
    client = stripe_client_for(key["vault_key"])
    client.v1.payment_intents.create(params=PI)

    keybrake(home, "revoke", key["key_id"])

    with pytest.raises(stripe.AuthenticationError) as refused:
        client.v1.payment_intents.create(params=PI)
    assert code_of(refused.value) == "keybrake_key_revoked"


def test_revoke_by_label_cuts_off_every_key_of_the_run(proxy, stripe_client_for, issue, home):
    keys = [issue("--total-usd-cap", "500", "--allow", "POST /v1/payment_intents", "--label", "run-x")
            for _ in range(2)]
    assert keybrake_json(home, "revoke", "--label", "run-x") == {"revoked": [k["key_id"] for k in keys],
                                                                 "already_revoked": []}
    for key in keys:
        with pytest.raises(stripe.AuthenticationError):
            stripe_client_for(key["vault_key"]).v1.payment_intents.create(params=PI)


def test_expired_key_is_refused(proxy, stripe_client_for, issue):
    key = issue("--total-usd-cap", "500", "--allow", "POST /v1/payment_intents", "--expires-in", "1s")
    time.sleep(1.2)
    with pytest.raises(stripe.AuthenticationError) as refused:
        stripe_client_for(key["vault_key"]).v1.payment_intents.create(params=PI)
    assert code_of(refused.value) == "keybrake_key_expired"


def test_allowlist_miss_is_refused_before_the_vendor(proxy, fake_stripe, stripe_client_for, issue):
    key = issue("--total-usd-cap", "500", "--allow", "POST /v1/payment_intents")
    with pytest.raises(stripe.PermissionError) as refused:
        stripe_client_for(key["vault_key"]).v1.transfers.create(
            params={"amount": 100, "currency": "usd", "destination": "acct_1"})
    assert code_of(refused.value) == "keybrake_endpoint_not_allowed"
    assert "POST /v1/payment_intents" in refused.value.user_message
    assert fake_stripe.hits == 0


def test_declined_card_releases_its_hold(proxy, fake_stripe, stripe_client_for, issue, home):
    key = issue("--total-usd-cap", "100", "--allow", "POST /v1/payment_intents")
    client = stripe_client_for(key["vault_key"])
    with pytest.raises(stripe.CardError):
        client.v1.payment_intents.create(params={**PI, "payment_method": "pm_card_chargeDeclined"})
    shown = settled_key_json(home, key["key_id"])
    assert (shown["spent_usd"], shown["reserved_usd"], shown["remaining_usd"]) == ("0.00", "0.00", "100.00")
    # The released hold is usable again: two $50 charges fit the $100 cap.
    client.v1.payment_intents.create(params=PI)
    client.v1.payment_intents.create(params=PI)


def test_idempotent_retry_is_counted_once(proxy, fake_stripe, stripe_client_for, issue, home):
    key = issue("--total-usd-cap", "75", "--allow", "POST /v1/payment_intents", "--label", "run-idem")
    client = stripe_client_for(key["vault_key"])
    first = client.v1.payment_intents.create(params=PI, options={"idempotency_key": "order-42"})
    again = client.v1.payment_intents.create(params=PI, options={"idempotency_key": "order-42"})

    assert again.id == first.id
    assert again.last_response.headers.get("idempotent-replayed") == "true"
    assert fake_stripe.money_moved_minor == 5000
    shown = settled_key_json(home, key["key_id"])
    assert (shown["spent_usd"], shown["reserved_usd"]) == ("50.00", "0.00")
    rows = keybrake_json_format(home, "audit", "--label", "run-idem")
    assert [(r["object_id"], r["actual_usd"]) for r in rows] == [(first.id, "50.00"), (first.id, "0.00")]


def test_confirming_a_counted_payment_intent_adds_nothing(proxy, fake_stripe, stripe_client_for, issue, home):
    key = issue("--total-usd-cap", "50", "--allow", "POST /v1/payment_intents/**")
    client = stripe_client_for(key["vault_key"])
    intent = client.v1.payment_intents.create(params={"amount": 5000, "currency": "usd"})
    confirmed = client.v1.payment_intents.confirm(intent.id, params={"payment_method": "pm_card_visa"})
    assert confirmed.status == "succeeded"
    assert settled_key_json(home, key["key_id"])["spent_usd"] == "50.00"
    # A PaymentIntent Keybrake never counted cannot be priced: refused, not forwarded.
    with pytest.raises(stripe.PermissionError) as refused:
        client.v1.payment_intents.confirm("pi_notcreatedthroughkeybrake")
    assert code_of(refused.value) == "keybrake_unpriced_endpoint"


def test_wrong_and_real_keys_are_refused(proxy, fake_stripe, stripe_client_for):
    with pytest.raises(stripe.AuthenticationError) as real:
        stripe_client_for(REAL_SECRET).v1.payment_intents.create(params=PI)
    assert code_of(real.value) == "keybrake_real_secret_refused"
    with pytest.raises(stripe.AuthenticationError) as unknown:
        stripe_client_for("sk_kb_" + "A" * 43).v1.payment_intents.create(params=PI)
    assert code_of(unknown.value) == "keybrake_unknown_key"
    assert fake_stripe.hits == 0


def test_audit_rows_trace_every_call_to_its_run(proxy, stripe_client_for, issue, home):
    key = issue("--total-usd-cap", "60", "--allow", "POST /v1/payment_intents", "--label", "run-audit")
    client = stripe_client_for(key["vault_key"])
    intent = client.v1.payment_intents.create(params=PI)
    with pytest.raises(stripe.RateLimitError):
        client.v1.payment_intents.create(params=PI)

    rows = keybrake_json_format(home, "audit", "--label", "run-audit")
    assert [(r["decision"], r["status"], r["reserved_usd"], r["actual_usd"]) for r in rows] == [
        ("allowed", 200, "50.00", "50.00"), ("keybrake_cap_exceeded", 429, "0.00", "0.00")]
    assert rows[0]["object_id"] == intent.id
    assert rows[0]["key_id"] == key["key_id"] and rows[0]["path"] == "/v1/payment_intents"
    assert rows[0]["vendor_request_id"].startswith("req_")
    assert rows[0]["idempotency_key"]  # the SDK's own key, recorded for tracing
    assert (rows[0]["amount_minor"], rows[0]["currency"]) == (5000, "usd")
    csv_text = keybrake(home, "audit", "--label", "run-audit", "--format", "csv").stdout
    assert csv_text.splitlines()[0].startswith("ts,key_id,label")
    assert intent.id in csv_text


def test_no_secret_or_vault_key_in_database_or_log(proxy, stripe_client_for, issue, home, database_url, ledger_of):
    key = issue("--total-usd-cap", "60", "--allow", "POST /v1/payment_intents", "--label", "run-leak")
    client = stripe_client_for(key["vault_key"])
    client.v1.payment_intents.create(params=PI)
    with pytest.raises(stripe.RateLimitError):
        client.v1.payment_intents.create(params=PI)
    with pytest.raises(stripe.AuthenticationError):
        stripe_client_for(REAL_SECRET).v1.payment_intents.create(params=PI)
    proxy.stop()  # flush the log and checkpoint the WAL into the main file

    dumps = [(path, path.read_bytes()) for path in sorted(home.rglob("keybrake.db*")) + [proxy.log_path]]
    if database_url is not None:
        dumps.append(("pg_dump", pg_dump(database_url)))
    for where, data in dumps:
        assert REAL_SECRET.encode() not in data, where
        assert key["vault_key"].encode() not in data, where
    assert len(ledger_of().audit_rows(AuditFilter())) == 3  # the check read real rows


def test_non_vendor_host_passes_through_untouched(proxy, tls_echo_server):
    # The client trusts only the server's own certificate: an intercepted (re-signed) connection would fail.
    url, cert_path = tls_echo_server
    with httpx.Client(proxy=proxy.url, verify=ssl.create_default_context(cafile=str(cert_path))) as client:
        response = client.get(url + "/hello", headers={"authorization": "Bearer sk_kb_untouched",
                                                       "x-keybrake-test": "kept"})
    assert response.status_code == 200
    echoed = response.json()
    assert echoed["authorization"] == "Bearer sk_kb_untouched"
    assert echoed["x-keybrake-test"] == "kept"


def keybrake_json_format(home, *args):
    return json.loads(keybrake(home, *args, "--format", "json").stdout)


def code_of(error: stripe.StripeError) -> str:
    return error.json_body["error"]["code"]


def pg_dump(url: str) -> bytes:
    """The whole database as pg_dump writes it (the dump an operator would back up)."""
    binary = shutil.which("pg_dump") or sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"))[-1]
    return subprocess.run([binary, "--no-owner", url], capture_output=True, check=True, timeout=60).stdout
