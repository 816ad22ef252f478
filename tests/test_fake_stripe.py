"""Tests for the stdlib fake Stripe server, driven by the official stripe SDK and raw httpx.

The fake is the yardstick for every end-to-end money assertion, so these tests pin the parts
a proxy depends on: money accounting, idempotent replay, and faults that strike after the
money already moved.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import stripe
from stripe.params import PaymentIntentCreateParams

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # the package is not installed in every test environment
    sys.path.insert(0, str(REPO_ROOT))

from keybrake_addon.fakes.fake_stripe import DEFAULT_SECRET, FakeStripe  # noqa: E402

SECRET = DEFAULT_SECRET


# One shared client: building an httpx.Client per call costs ~20 ms (SSL context setup).
HTTP = httpx.Client(timeout=10)


@pytest.fixture(scope="module", autouse=True)
def _close_http() -> Iterator[None]:
    yield
    HTTP.close()


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    with FakeStripe() as f:
        yield f


def make_client(fake: FakeStripe, *, key: str = SECRET, retries: int = 0) -> stripe.StripeClient:
    return stripe.StripeClient(key, base_addresses={"api": fake.url}, max_network_retries=retries)


def raw(fake: FakeStripe, path: str, data: str | None = None, *, key: str | None = None,
        headers: dict[str, str] | None = None) -> httpx.Response:
    hdrs = {"Authorization": f"Bearer {SECRET}", **(headers or {})}
    if data is None:
        return HTTP.get(fake.url + path, headers=hdrs)
    hdrs["Content-Type"] = "application/x-www-form-urlencoded"
    if key is not None:
        hdrs["Idempotency-Key"] = key
    return HTTP.post(fake.url + path, content=data, headers=hdrs)


PI_PARAMS: PaymentIntentCreateParams = {
    "amount": 2000, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True,
}


def test_create_and_confirm_moves_money(fake: FakeStripe) -> None:
    client = make_client(fake)
    pi = client.v1.payment_intents.create(params=PI_PARAMS)
    assert pi.id.startswith("pi_") and len(pi.id) == 27
    assert (pi.status, pi.amount_received) == ("succeeded", 2000)
    assert fake.money_moved_minor == 2000
    assert fake.money_moved_by_currency == {"usd": 2000}
    assert fake.received[0].authorization == f"Bearer {SECRET}"  # stripe-python sends Bearer

    draft = client.v1.payment_intents.create(params={"amount": 700, "currency": "eur"})
    assert (draft.status, draft.amount_received) == ("requires_payment_method", 0)
    assert fake.money_moved_minor == 2000
    done = client.v1.payment_intents.confirm(draft.id, params={"payment_method": "pm_card_visa"})
    assert done.status == "succeeded"
    assert fake.money_moved_by_currency == {"usd": 2000, "eur": 700}
    assert client.v1.payment_intents.retrieve(draft.id).amount_received == 700


def test_manual_capture_moves_money_only_on_capture(fake: FakeStripe) -> None:
    client = make_client(fake)
    pi = client.v1.payment_intents.create(params={**PI_PARAMS, "capture_method": "manual"})
    assert (pi.status, pi.amount_capturable, fake.money_moved_minor) == ("requires_capture", 2000, 0)
    captured = client.v1.payment_intents.capture(pi.id, params={"amount_to_capture": 1500})
    assert (captured.status, captured.amount_received) == ("succeeded", 1500)
    assert fake.money_moved_minor == 1500
    with pytest.raises(stripe.InvalidRequestError) as ei:
        client.v1.payment_intents.cancel(pi.id)
    assert ei.value.code == "payment_intent_unexpected_state"


def test_declined_card_raises_card_error_and_moves_nothing(fake: FakeStripe) -> None:
    client = make_client(fake)
    with pytest.raises(stripe.CardError) as ei:
        client.v1.payment_intents.create(
            params={**PI_PARAMS, "payment_method": "pm_card_chargeDeclined"})
    assert ei.value.http_status == 402
    assert ei.value.code == "card_declined"
    err = ei.value.json_body["error"]  # type: ignore[index]
    assert err["decline_code"] == "generic_decline"
    assert err["payment_intent"]["status"] == "requires_payment_method"
    assert fake.money_moved_minor == 0


def test_idempotent_replay_returns_same_object_and_moves_money_once(fake: FakeStripe) -> None:
    body = "amount=2000&currency=usd&payment_method=pm_card_visa&confirm=true"
    first = raw(fake, "/v1/payment_intents", body, key="order-1")
    second = raw(fake, "/v1/payment_intents", body, key="order-1")
    assert first.status_code == second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert first.headers["request-id"].startswith("req_")
    assert second.headers["request-id"] != first.headers["request-id"]
    assert second.headers["original-request"] == first.headers["request-id"]
    assert fake.money_moved_minor == 2000
    assert len(fake.objects_created) == 1

    client = make_client(fake)
    a = client.v1.payment_intents.create(params=PI_PARAMS, options={"idempotency_key": "k2"})
    b = client.v1.payment_intents.create(params=PI_PARAMS, options={"idempotency_key": "k2"})
    assert a.id == b.id
    assert fake.money_moved_minor == 4000


def test_same_key_different_params_is_idempotency_error(fake: FakeStripe) -> None:
    client = make_client(fake)
    client.v1.payment_intents.create(params=PI_PARAMS, options={"idempotency_key": "k"})
    with pytest.raises(stripe.IdempotencyError):
        client.v1.payment_intents.create(
            params={**PI_PARAMS, "amount": 9999}, options={"idempotency_key": "k"})
    assert fake.money_moved_minor == 2000


def test_validation_errors_are_not_saved_for_replay(fake: FakeStripe) -> None:
    bad = raw(fake, "/v1/payment_intents", "currency=usd", key="k")
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "amount"
    good = raw(fake, "/v1/payment_intents", "amount=100&currency=usd", key="k")
    assert good.status_code == 200 and "idempotent-replayed" not in good.headers


def test_auth_bearer_basic_and_bad_key(fake: FakeStripe) -> None:
    with pytest.raises(stripe.AuthenticationError) as ei:
        make_client(fake, key="sk_test_wrong_key").v1.customers.create()
    assert ei.value.http_status == 401
    assert "sk_test_wrong_key" not in str(ei.value.json_body)
    assert fake.money_moved_minor == 0
    basic = HTTP.post(fake.url + "/v1/customers", data={"email": "a@b.c"}, auth=(SECRET, ""))
    assert basic.status_code == 200 and basic.json()["id"].startswith("cus_")
    assert HTTP.get(fake.url + "/v1/balance", auth=(SECRET, "pw")).status_code == 401
    assert HTTP.get(fake.url + "/v1/balance").status_code == 401


def test_refund_without_amount_refunds_the_remainder(fake: FakeStripe) -> None:
    client = make_client(fake)
    ch = client.v1.charges.create(params={"amount": 5000, "currency": "usd", "source": "tok_visa"})
    assert (ch.captured, ch.amount_captured, ch.paid) == (True, 5000, True)
    assert client.v1.refunds.create(params={"charge": ch.id, "amount": 1000}).amount == 1000
    rest = client.v1.refunds.create(params={"charge": ch.id})
    assert (rest.amount, rest.status, rest.charge) == (4000, "succeeded", ch.id)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.refunds.create(params={"charge": ch.id})
    pi = client.v1.payment_intents.create(params=PI_PARAMS)
    assert client.v1.refunds.create(params={"payment_intent": pi.id}).amount == 2000
    assert fake.money_moved_minor == 5000 + 1000 + 4000 + 2000 + 2000


def test_transfers_payouts_customers_balance_and_404s(fake: FakeStripe) -> None:
    client = make_client(fake)
    tr = client.v1.transfers.create(params={"amount": 300, "currency": "usd", "destination": "acct_1"})
    po = client.v1.payouts.create(params={"amount": 200, "currency": "usd"})
    assert tr.id.startswith("tr_") and (po.id[:3], po.status) == ("po_", "pending")
    cus = client.v1.customers.create(params={"email": "x@example.com"})
    assert client.v1.customers.retrieve(cus.id).email == "x@example.com"
    assert client.v1.balance.retrieve().object == "balance"
    assert fake.money_moved_minor == 500
    with pytest.raises(stripe.InvalidRequestError) as ei:
        client.v1.payment_intents.retrieve("pi_missing")
    assert (ei.value.http_status, ei.value.code) == (404, "resource_missing")
    unknown = raw(fake, "/v1/nonsense", "a=1")
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "invalid_request_error"


def test_fail_after_charge_is_healed_by_sdk_retry_and_replay() -> None:
    with FakeStripe(fail_after_charge_rate=1.0) as fake:
        pi = make_client(fake, retries=2).v1.payment_intents.create(params=PI_PARAMS)
        assert pi.status == "succeeded"
        assert fake.money_moved_minor == 2000
        posts = [r for r in fake.received if r.method == "POST"]
        assert len(posts) == 2
        assert posts[0].headers["idempotency-key"] == posts[1].headers["idempotency-key"]
        with pytest.raises(stripe.APIError) as ei:  # without retries the caller sees a 500...
            make_client(fake).v1.payment_intents.create(params=PI_PARAMS)
        assert ei.value.http_status == 500
        assert fake.money_moved_minor == 4000  # ...although the money moved


def test_drop_after_charge_is_healed_by_sdk_retry_and_replay() -> None:
    with FakeStripe(drop_after_charge_rate=1.0) as fake:
        ch = make_client(fake, retries=2).v1.charges.create(params={"amount": 900, "currency": "usd"})
        assert ch.captured
        assert fake.money_moved_minor == 900
        assert len(fake.received) == 2
        with pytest.raises(stripe.APIConnectionError):
            make_client(fake).v1.charges.create(params={"amount": 900, "currency": "usd"})
        assert fake.money_moved_minor == 1800


def test_fault_injection_is_reproducible_with_a_seed() -> None:
    def outcomes(seed: int) -> list[int]:
        with FakeStripe(fail_after_charge_rate=0.5, seed=seed) as fake:
            return [raw(fake, "/v1/charges", "amount=1&currency=usd").status_code for _ in range(16)]

    assert outcomes(7) == outcomes(7)
    assert set(outcomes(7)) == {200, 500}


def test_concurrent_duplicates_of_one_key_move_money_once(fake: FakeStripe) -> None:
    body = "amount=500&currency=usd&confirm=true&payment_method=pm_card_visa"
    with ThreadPoolExecutor(max_workers=16) as pool:
        replies = list(pool.map(lambda _: raw(fake, "/v1/payment_intents", body, key="dup"), range(32)))
    assert {r.json()["id"] for r in replies} == {replies[0].json()["id"]}
    assert sum("idempotent-replayed" not in r.headers for r in replies) == 1
    assert fake.money_moved_minor == 500 and fake.hits == 32


def test_form_parsing_of_raw_and_escaped_brackets(fake: FakeStripe) -> None:
    escaped = raw(fake, "/v1/payment_intents", "amount=100&currency=usd&metadata%5Border_id%5D=42")
    plain = raw(fake, "/v1/payment_intents", "amount=100&currency=usd&metadata[order_id]=43")
    assert escaped.json()["metadata"] == {"order_id": "42"}
    assert plain.json()["metadata"] == {"order_id": "43"}
    assert fake.received[0].form["metadata[order_id]"] == "42"
    assert fake.received[0].headers["content-type"] == "application/x-www-form-urlencoded"
    updated = raw(fake, f"/v1/payment_intents/{plain.json()['id']}", "metadata%5Bnote%5D=hi&amount=150")
    assert updated.json()["metadata"] == {"order_id": "43", "note": "hi"}
    assert updated.json()["amount"] == 150


def test_a_body_cut_short_by_a_dying_client_is_not_processed(fake: FakeStripe) -> None:
    """A client killed mid-request (the proxy under kill -9) leaves headers and part of a body.
    Stripe never sees such a request; the fake must not answer it either, or a test counts a
    call as reached-the-vendor whose replay the vendor never saved."""
    body = b"amount=2000&currency=usd&payment_method=pm_card_visa&confirm=true"
    with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/payment_intents HTTP/1.1\r\nHost: fake\r\n"
                     b"Authorization: Bearer " + SECRET.encode() + b"\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\nIdempotency-Key: cut-1\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:10])
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1024) == b""  # closed without an answer
    assert (fake.hits, fake.received) == (0, [])
    again = raw(fake, "/v1/payment_intents", body.decode(), key="cut-1")
    assert again.status_code == 200 and "idempotent-replayed" not in again.headers
    assert fake.money_moved_minor == 2000


def test_keep_alive_reuses_one_connection(fake: FakeStripe) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    try:
        conn.request("GET", "/v1/balance", headers={"Authorization": f"Bearer {SECRET}"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Length")
        resp.read()
        sock = conn.sock
        conn.request("GET", "/v1/balance", headers={"Authorization": "Bearer nope"})
        resp = conn.getresponse()
        assert resp.status == 401
        resp.read()
        assert sock is not None and conn.sock is sock
    finally:
        conn.close()


def test_module_main_prints_url_and_stops_on_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "keybrake_addon.fakes.fake_stripe", "--port", "0", "--secret", "sk_x"],
        stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("fake stripe listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        assert HTTP.get(url + "/v1/balance", headers={"Authorization": "Bearer sk_x"}).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
