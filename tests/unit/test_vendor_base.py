"""The vendor contract's shared helpers."""

import pytest

from keybrake_addon.vendors.base import repeated_single_valued_headers


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
