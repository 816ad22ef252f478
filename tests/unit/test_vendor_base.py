"""The vendor contract's shared helpers."""

import pytest

from keybrake_addon.vendors.base import malformed_header_lines, repeated_single_valued_headers


@pytest.mark.parametrize(
    "fields, repeated",
    [
        ([(b"Idempotency-Key", b"a"), (b"idempotency-key", b"b")], ("idempotency-key",)),
        ([(b"Authorization", b"Bearer x"), (b"AUTHORIZATION", b"Bearer y")], ("authorization",)),
        ([(b"Content-Type", b"a"), (b"Content-Length", b"1"), (b"content-type", b"b"), (b"content-length", b"1"),
          (b"Stripe-Account", b"acct_1"), (b"stripe-account", b"acct_1")],
         ("content-length", "content-type", "stripe-account")),
        ([("Idempotency-Key", "a"), ("Idempotency-Key", "a")], ("idempotency-key",)),  # same value: still two lines
    ],
)
def test_repeated_single_valued_headers_are_named(fields, repeated):
    assert repeated_single_valued_headers(fields) == repeated


def test_headers_that_may_repeat_are_left_alone():
    fields = [(b"Accept", b"a"), (b"accept", b"b"), (b"Cookie", b"a=1"), (b"cookie", b"b=2"),
              (b"Authorization", b"Bearer x"), (b"Idempotency-Key", b"k")]
    assert repeated_single_valued_headers(fields) == ()


@pytest.mark.parametrize("fields, named", [
    ([(b"Stripe-Account ", b"acct_2")], ("Stripe-Account ",)),
    ([(b"Stripe-Account\t", b"acct_2")], ("Stripe-Account\\t",)),
    ([(b"X Y", b"1")], ("X Y",)),
    ([(b"Idempotency-Key", b"a\r\n b")], ("Idempotency-Key",)),  # a folded line, as mitmproxy keeps it
    ([(b"Idempotency-Key", b"a\nb")], ("Idempotency-Key",)),
    ([(b"X-Trace", b"a\0b")], ("X-Trace",)),
    ([(b"", b"x")], ("",)),
    ([(b"Caf\xe9", b"x")], ("Caf\\xe9",)),
])
def test_header_lines_that_are_not_well_formed_are_named(fields, named):
    assert malformed_header_lines([(b"Host", b"api.stripe.com"), *fields]) == named


def test_well_formed_header_lines_pass():
    fields = [(b"Authorization", b"Bearer sk_x"), (b"Idempotency-Key", b"order 1; \t caf\xe9"),
              (b"X-Weird_Name.v2~!#$%&'*+^`|", b"")]
    assert malformed_header_lines(fields) == ()
