"""Bytes a database cannot store, sent by a worker or a stranger, get a vendor-shaped refusal, and
the ledger keeps serving everyone else.

mitmproxy passes a NUL byte, or bytes that are not UTF-8, through to the gate in a path or a header.
On PostgreSQL one such audit row failed its batch as if the database were down, and again in the
batches its retries joined: each time the replica refused every call for a second. The requests
go over a raw socket: an HTTP client will not send such bytes.
"""

import json
import socket

import httpx

from keybrake_addon.ledger.base import AuditFilter

from .helpers import api_address

BOTH_BACKENDS = True
PI_FORM = b"amount=500&currency=usd&confirm=true&payment_method=pm_card_visa"


def raw_call(api_proxy, path: bytes, headers: list[bytes], body: bytes = b"",
             method: bytes = b"POST") -> tuple[int, dict]:
    head = [method + b" /stripe" + path + b" HTTP/1.1", b"Host: keybrake", b"Connection: close",
            b"Content-Type: application/x-www-form-urlencoded", b"Content-Length: %d" % len(body), *headers]
    with socket.create_connection(api_address(api_proxy), timeout=10) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2] or b"{}")


def stripe_call(api_proxy, vault_key: str, idempotency_key: str) -> httpx.Response:
    return httpx.post(api_proxy.api_url + "/stripe/v1/payment_intents", content=PI_FORM, timeout=10,
                      headers={"authorization": f"Bearer {vault_key}", "idempotency-key": idempotency_key,
                               "content-type": "application/x-www-form-urlencoded"})


def test_an_idempotency_key_with_a_nul_is_refused_unforwarded(api_proxy, fake_stripe, issue, ledger_of):
    key = issue("--total-usd-cap", "100", "--allow", "POST /v1/payment_intents")
    status, error = raw_call(api_proxy, b"/v1/payment_intents", [b"Authorization: Bearer " + key["vault_key"].encode(),
                                                           b"Idempotency-Key: order\x00-1"], PI_FORM)
    assert status == 400, error
    assert error["error"]["code"] == "keybrake_invalid_request"
    assert "Idempotency-Key" in error["error"]["message"]
    assert fake_stripe.hits == 0
    assert stripe_call(api_proxy, key["vault_key"], "order-1").status_code == 200
    assert fake_stripe.hits == 1
    # Refused before its key was looked up: audited as a stranger's request is, within those bounds.
    rows = ledger_of().audit_rows(AuditFilter())
    assert [(row["decision"], row["idempotency_key"]) for row in rows] == [
        ("keybrake_invalid_request", "order\ufffd-1"), ("allowed", "order-1")]
    assert [row["key_id"] for row in rows] == [None, key["key_id"]]


def test_header_bytes_that_are_not_utf8_are_kept_one_character_each(api_proxy, fake_stripe, issue, ledger_of):
    """Header values are read as Latin-1: every byte string is its own text, so nothing collides."""
    key = issue("--total-usd-cap", "100", "--allow", "POST /v1/payment_intents")
    auth = b"Authorization: Bearer " + key["vault_key"].encode()
    for _ in range(2):  # the second is a retry: attached to the first call's hold, not counted again
        status, answer = raw_call(api_proxy, b"/v1/payment_intents", [auth, b"Idempotency-Key: order-\xff\xfe"], PI_FORM)
        assert status == 200, answer
    rows = ledger_of().audit_rows(AuditFilter(key_id=key["key_id"]))
    assert [row["idempotency_key"] for row in rows] == ["order-\xff\xfe"] * 2
    assert ledger_of().get_key(key["key_id"]).spent_micros == 5_000_000


def test_a_strangers_unstorable_path_is_audited_and_the_ledger_keeps_serving(api_proxy, fake_stripe, issue, ledger_of):
    key = issue("--total-usd-cap", "100", "--allow", "POST /v1/payment_intents")
    for path in (b"/v1/charges/\x00nul", b"/v1/charges/\xff\xfe"):
        status, error = raw_call(api_proxy, path, [b"Authorization: Bearer sk_kb_nobody"])
        assert status in (400, 401), error
        assert error["error"]["code"].startswith("keybrake_")
    # The refusal rows are written, and nothing is left failing the batches after them.
    for attempt in range(3):
        assert stripe_call(api_proxy, key["vault_key"], f"after-{attempt}").status_code == 200
    assert fake_stripe.hits == 3
    paths = [row["path"] for row in ledger_of().audit_rows(AuditFilter()) if row["key_id"] is None]
    assert set(paths) == {"/v1/charges/\ufffdnul", "/v1/charges/\ufffd\ufffd"}
    assert "ledger is unavailable" not in api_proxy.log_text()


def test_a_workers_unstorable_path_or_method_is_refused_unforwarded(api_proxy, fake_stripe, issue, ledger_of):
    key = issue("--total-usd-cap", "100", "--allow-all", "--allow-unpriced")
    auth = b"Authorization: Bearer " + key["vault_key"].encode()
    for path in (b"/v1/customers/\x00cus", b"/v1/customers/\xff\xfe"):
        status, error = raw_call(api_proxy, path, [auth])
        assert (status, error["error"]["code"]) == (400, "keybrake_invalid_request"), error
        assert "path" in error["error"]["message"]
    status, error = raw_call(api_proxy, b"/v1/customers", [auth], method=b"P\xffST")
    assert (status, error["error"]["code"]) == (400, "keybrake_invalid_request"), error
    assert fake_stripe.hits == 0
    assert stripe_call(api_proxy, key["vault_key"], "after").status_code == 200
    assert [row["decision"] for row in ledger_of().audit_rows(AuditFilter())] == ["keybrake_invalid_request"] * 3 + [
        "allowed"]


def test_an_amount_past_what_the_ledger_counts_is_refused_before_it_is_reserved(api_proxy, fake_stripe, issue, ledger_of):
    """A key without a cap lets any amount through its caps: the number must still fit the ledger."""
    key = issue("--no-cap", "--allow", "POST /v1/payment_intents")
    auth = b"Authorization: Bearer " + key["vault_key"].encode()
    for amount in (b"10000000000000000", b"99999999999999999999999"):
        status, error = raw_call(api_proxy, b"/v1/payment_intents", [auth], b"amount=" + amount + b"&currency=usd")
        assert (status, error["error"]["code"]) == (400, "keybrake_invalid_request"), error
    assert fake_stripe.hits == 0
    assert stripe_call(api_proxy, key["vault_key"], "after").status_code == 200
    assert [row["decision"] for row in ledger_of().audit_rows(AuditFilter())] == ["keybrake_invalid_request"] * 2 + [
        "allowed"]
