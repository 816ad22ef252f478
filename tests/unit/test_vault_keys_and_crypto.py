"""Vault keys, secret sealing, and key issuance validation."""

import hashlib
import hmac
import math
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from keybrake_addon.ledger.base import KeySpec
from keybrake_addon.ledger.sqlite import SqliteLedger
from keybrake_addon.vault import crypto
from keybrake_addon.vault.crypto import MasterKeyError, Sealed
from keybrake_addon.durations import InvalidDuration, parse_duration
from keybrake_addon.vault.issuance import IssueError, KeyRequest, validate
from keybrake_addon.vault.key_lifetimes import (
    DEFAULT_KEY_TTL,
    MAX_KEY_TTL,
    InvalidSetting,
    KeyLifetimes,
    read_lifetimes,
    set_lifetime,
)
from keybrake_addon.vault.secrets import SecretVault, UnacceptableSecret, check_secret, stripe_mode
from keybrake_addon.vault.vault_keys import (
    derive_vault_key,
    hash_vault_key,
    is_vault_key_shaped,
    new_key_id,
)
from keybrake_addon.vendors import stripe

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
DK = b"d" * 32
OTHER_DK = b"e" * 32


def reference_vault_secret(derivation_key: bytes, vendor: str, key_id: str) -> str:
    """Independent statement of the documented derivation: HMAC-SHA256, 43 base62 digits, least significant first."""
    number = int.from_bytes(hmac.new(derivation_key, vendor.encode() + b"\x00" + key_id.encode(),
                                     hashlib.sha256).digest(), "big")
    digits = []
    while len(digits) < 43:
        digits.append(BASE62[number % 62])
        number //= 62
    return "".join(digits)


# --- vault keys ----------------------------------------------------------------------------------

def test_derive_is_deterministic_and_matches_the_documented_derivation():
    first = derive_vault_key(DK, "stripe", "kbk_0001")
    assert first == derive_vault_key(DK, "stripe", "kbk_0001")
    assert first == "sk_kb_" + reference_vault_secret(DK, "stripe", "kbk_0001")


def test_derive_differs_for_other_key_id_derivation_key_or_vendor():
    base = derive_vault_key(DK, "stripe", "kbk_0001")
    assert derive_vault_key(DK, "stripe", "kbk_0002") != base
    assert derive_vault_key(OTHER_DK, "stripe", "kbk_0001") != base
    assert derive_vault_key(DK, "resend", "kbk_0001")[6:] != base[6:]


@pytest.mark.parametrize("vendor, prefix, length", [("stripe", "sk_kb_", 49), ("resend", "re_kb_", 49),
                                                    ("twilio", "kb_", 46)])
def test_prefix_and_length(vendor, prefix, length):
    key = derive_vault_key(DK, vendor, "kbk_abc")
    assert key.startswith(prefix)
    assert len(key) == length
    assert is_vault_key_shaped(key)


def test_derived_part_is_43_base62_chars_of_at_least_128_bits():
    secrets_ = [derive_vault_key(DK, "stripe", f"kbk_{i:04d}")[len("sk_kb_"):] for i in range(300)]
    for secret in secrets_:
        assert re.fullmatch(r"[0-9A-Za-z]{43}", secret)
    assert 43 * math.log2(62) >= 128
    assert len(set(secrets_)) == 300
    # 300 * 43 characters from a uniform source cover the whole alphabet with overwhelming probability.
    assert len(set("".join(secrets_))) >= 60


@pytest.mark.parametrize(
    "token, shaped",
    [
        ("sk_kb_" + "a" * 43, True),
        ("re_kb_" + "a" * 43, True),
        ("kb_" + "a" * 43, True),
        ("sk_kb_" + "a" * 42, False),
        ("sk_kb_" + "a" * 44, False),
        ("sk_" + "live_" + "a" * 41, False),
        ("", False),
    ],
)
def test_is_vault_key_shaped(token, shaped):
    assert is_vault_key_shaped(token) is shaped


def test_vault_key_is_not_a_real_looking_stripe_secret():
    assert not stripe.looks_like_real_secret(derive_vault_key(DK, "stripe", "kbk_1"))


def test_hash_vault_key():
    # SHA-256("abc"), the FIPS 180-2 test vector.
    assert hash_vault_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    key = derive_vault_key(DK, "stripe", "kbk_1")
    digest = hash_vault_key(key)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert key not in digest and key[6:] not in digest


def test_new_key_id_shape_and_uniqueness():
    ids = {new_key_id() for _ in range(2000)}
    assert len(ids) == 2000
    for key_id in list(ids)[:50]:
        assert re.fullmatch(r"kbk_[0-9a-f]{20}", key_id)


# --- crypto --------------------------------------------------------------------------------------

MASTER = bytes(range(32))
OTHER_MASTER = bytes(range(1, 33))
PLAINTEXT = "sk_" + "test_" + "PlainTextValue1234567890"


def test_seal_unseal_round_trip():
    sealed = crypto.seal(MASTER, "stripe", "default", PLAINTEXT)
    assert len(sealed.nonce) == 12
    assert len(sealed.ciphertext) == len(PLAINTEXT.encode()) + 16  # GCM tag
    assert PLAINTEXT.encode() not in sealed.ciphertext
    assert crypto.unseal(MASTER, "stripe", "default", sealed) == PLAINTEXT


def test_seal_uses_a_fresh_nonce():
    first = crypto.seal(MASTER, "stripe", "default", PLAINTEXT)
    second = crypto.seal(MASTER, "stripe", "default", PLAINTEXT)
    assert first.nonce != second.nonce
    assert first.ciphertext != second.ciphertext


def test_wrong_master_key_is_a_clear_error_without_the_plaintext():
    sealed = crypto.seal(MASTER, "stripe", "default", PLAINTEXT)
    with pytest.raises(MasterKeyError) as info:
        crypto.unseal(OTHER_MASTER, "stripe", "default", sealed)
    message = str(info.value)
    assert "cannot decrypt the stripe secret 'default'" in message
    assert "master key" in message
    assert PLAINTEXT not in message


@pytest.mark.parametrize("vendor, name", [("resend", "default"), ("stripe", "other"), ("stripe", "default\x00")])
def test_swapped_associated_data_fails(vendor, name):
    sealed = crypto.seal(MASTER, "stripe", "default", PLAINTEXT)
    with pytest.raises(MasterKeyError):
        crypto.unseal(MASTER, vendor, name, sealed)


def test_tampered_ciphertext_fails():
    sealed = crypto.seal(MASTER, "stripe", "default", PLAINTEXT)
    flipped = bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]
    with pytest.raises(MasterKeyError):
        crypto.unseal(MASTER, "stripe", "default", Sealed(sealed.nonce, flipped))


def test_master_key_encode_decode_round_trip():
    text = crypto.encode_master_key(MASTER)
    assert crypto.decode_master_key("  " + text + "\n", source="env") == MASTER
    assert len(crypto.new_master_key()) == 32


def test_decode_master_key_wrong_length():
    with pytest.raises(MasterKeyError) as info:
        crypto.decode_master_key(crypto.encode_master_key(b"k" * 16), source="master.key")
    assert str(info.value) == "the master key in master.key must be 32 bytes, got 16"


@pytest.mark.parametrize("text", ["abc", "é" * 44])
def test_decode_master_key_bad_base64(text):
    with pytest.raises(MasterKeyError) as info:
        crypto.decode_master_key(text, source="KEYBRAKE_MASTER_KEY")
    assert str(info.value) == "the master key in KEYBRAKE_MASTER_KEY is not valid base64"


def test_fingerprint_is_8_hex_chars_of_sha256():
    assert crypto.fingerprint("abc") == "ba7816bf"
    assert re.fullmatch(r"[0-9a-f]{8}", crypto.fingerprint(PLAINTEXT))


def test_subkeys_and_check_are_distinct_and_stable():
    sub = crypto.derive_subkey(MASTER, "vault-key-derivation")
    assert len(sub) == 32
    assert sub == crypto.derive_subkey(MASTER, "vault-key-derivation")
    assert sub != crypto.derive_subkey(MASTER, "other") != MASTER
    assert re.fullmatch(r"[0-9a-f]{32}", crypto.master_key_check(MASTER))
    assert crypto.master_key_check(MASTER) != crypto.master_key_check(OTHER_MASTER)


# --- issuance ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "text, delta",
    [
        ("90s", timedelta(seconds=90)),
        ("90m", timedelta(minutes=90)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        (" 3 h ", timedelta(hours=3)),
    ],
)
def test_parse_duration(text, delta):
    assert parse_duration(text) == delta


@pytest.mark.parametrize("text", ["0h", "2x", "", "h", "-1h", "1.5h", "2hours", None])
def test_parse_duration_rejects(text):
    with pytest.raises(InvalidDuration):
        parse_duration(text)


NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def ledger(tmp_path):
    store = SqliteLedger(tmp_path / "k.db")
    store.put_secret("stripe", "default", b"n" * 12, b"c", "fp", None)
    yield store
    store.close()


def test_validate_accepts_and_normalises(ledger):
    spec = validate(ledger, KeyRequest(vendor="stripe", label="job-7", daily_cap_micros=100_000_000,
                                       allowlist=("post /v1/payment_intents",), expires_in="2h"), NOW)
    assert spec == KeySpec(vendor="stripe", secret_name="default", label="job-7", daily_cap_micros=100_000_000,
                           total_cap_micros=None, max_calls=None, allowlist=("POST /v1/payment_intents",),
                           allow_all=False, allow_unpriced=False,
                           expires_at=datetime(2026, 3, 1, 14, 0, tzinfo=UTC))


def test_validate_accepts_no_cap_with_allow_all(ledger):
    spec = validate(ledger, KeyRequest(vendor="stripe", no_cap=True, allow_all=True), NOW)
    assert (spec.daily_cap_micros, spec.total_cap_micros, spec.allowlist, spec.allow_all) == (None, None, (), True)


def test_validate_zero_cap_counts_as_a_cap(ledger):
    spec = validate(ledger, KeyRequest(vendor="stripe", total_cap_micros=0, allow_all=True), NOW)
    assert spec.total_cap_micros == 0


@pytest.mark.parametrize(
    "request_, field",
    [
        (KeyRequest(vendor="paypal", daily_cap_micros=1, allow_all=True), "vendor"),
        (KeyRequest(vendor="stripe", secret_name="missing", daily_cap_micros=1, allow_all=True), "secret"),
        (KeyRequest(vendor="stripe", daily_cap_micros=-1, allow_all=True), "daily_usd_cap"),
        (KeyRequest(vendor="stripe", total_cap_micros=-1, allow_all=True), "total_usd_cap"),
        (KeyRequest(vendor="stripe", daily_cap_micros=1, max_calls=-1, allow_all=True), "max_calls"),
        (KeyRequest(vendor="stripe", allow_all=True), "daily_usd_cap"),  # no cap, no --no-cap
        (KeyRequest(vendor="stripe", max_calls=5, allow_all=True), "daily_usd_cap"),  # max_calls is no USD cap
        (KeyRequest(vendor="stripe", daily_cap_micros=1, no_cap=True, allow_all=True), "no_cap"),
        (KeyRequest(vendor="stripe", daily_cap_micros=1), "allowed_endpoints"),  # no allowlist, no --allow-all
        (KeyRequest(vendor="stripe", daily_cap_micros=1, allowlist=("GET /v1/**/x",)), "allowed_endpoints"),
        (KeyRequest(vendor="stripe", daily_cap_micros=1, allowlist=("FETCH /v1/x",)), "allowed_endpoints"),
        (KeyRequest(vendor="stripe", daily_cap_micros=1, allow_all=True, expires_in="0h"), "expires_in"),
    ],
    ids=["unknown-vendor", "missing-secret", "negative-daily", "negative-total", "negative-max-calls",
         "no-cap", "max-calls-only", "cap-and-no-cap", "no-allowlist", "double-star-not-last",
         "bad-method", "zero-duration"],
)
def test_validate_refuses(ledger, request_, field):
    with pytest.raises(IssueError) as info:
        validate(ledger, request_, NOW)
    assert info.value.field == field
    assert str(info.value).startswith(field + ": ")


# --- keys expire by default: the installation's default and maximum TTL ---------------------


def test_a_key_without_a_lifetime_gets_the_default_of_24_hours(ledger):
    spec = validate(ledger, KeyRequest(vendor="stripe", daily_cap_micros=1, allow_all=True), NOW)
    assert spec.expires_at == NOW + timedelta(hours=24)


def test_the_default_ttl_is_the_installations_setting(ledger):
    set_lifetime(ledger, DEFAULT_KEY_TTL, "12h")
    spec = validate(ledger, KeyRequest(vendor="stripe", daily_cap_micros=1, allow_all=True), NOW)
    assert spec.expires_at == NOW + timedelta(hours=12)


def test_a_lifetime_over_the_maximum_is_refused_until_the_operator_raises_it(ledger):
    asked = KeyRequest(vendor="stripe", daily_cap_micros=1, allow_all=True, expires_in="90d")
    with pytest.raises(IssueError) as refused:
        validate(ledger, asked, NOW)
    assert refused.value.field == "expires_in"
    assert "maximum key lifetime (30d)" in str(refused.value) and "max-key-ttl" in str(refused.value)
    assert validate(ledger, replace(asked, expires_in="30d"), NOW).expires_at == NOW + timedelta(days=30)
    set_lifetime(ledger, MAX_KEY_TTL, "90d")
    assert validate(ledger, asked, NOW).expires_at == NOW + timedelta(days=90)


def test_the_default_ttl_can_never_exceed_the_maximum(ledger):
    with pytest.raises(InvalidSetting, match="shorter than default-key-ttl"):
        set_lifetime(ledger, MAX_KEY_TTL, "2h")  # under the factory default of 24h
    set_lifetime(ledger, DEFAULT_KEY_TTL, "1h")
    set_lifetime(ledger, MAX_KEY_TTL, "2h")
    with pytest.raises(InvalidSetting, match="longer than max-key-ttl"):
        set_lifetime(ledger, DEFAULT_KEY_TTL, "3h")
    with pytest.raises(InvalidSetting, match="shorter than default-key-ttl"):
        set_lifetime(ledger, MAX_KEY_TTL, "30m")
    assert read_lifetimes(ledger) == KeyLifetimes("1h", "2h", True, True)


@pytest.mark.parametrize("value", ["0h", "-1d", "soon", "", "99999d"])
def test_a_ttl_setting_must_be_a_positive_duration(ledger, value):
    with pytest.raises(InvalidSetting, match="default-key-ttl"):
        set_lifetime(ledger, DEFAULT_KEY_TTL, value)
    assert read_lifetimes(ledger) == KeyLifetimes("24h", "30d")


def test_an_unreadable_stored_setting_refuses_issuance_instead_of_ignoring_it(ledger):
    ledger.set_meta("key_ttl_max", "forever")
    with pytest.raises(IssueError) as refused:
        validate(ledger, KeyRequest(vendor="stripe", daily_cap_micros=1, allow_all=True), NOW)
    assert refused.value.field == "expires_in" and "max-key-ttl" in str(refused.value)


# --- secret hygiene ------------------------------------------------------------------------


@pytest.mark.parametrize("value, reason", [
    ("sk_kb_" + "A" * 43, "vault key"),
    ("re_kb_" + "A" * 43, "vault key"),
    ("pk_live_" + "a" * 24, "publishable key"),
    ("pk_test_" + "a" * 24, "publishable key"),
    ("   ", "empty"),
    ("sk_test_abc def", "spaces"),
    ("sk_test_abc\x1b[2J", "control characters"),
])
def test_check_secret_refuses_what_cannot_be_a_real_secret(value, reason):
    with pytest.raises(UnacceptableSecret, match=reason):
        check_secret("stripe", value)


@pytest.mark.parametrize("value", ["sk_test_" + "a" * 24, "rk_live_" + "a" * 24, "re_123abc", "twilio0auth0token"])
def test_check_secret_accepts_real_looking_secrets(value):
    check_secret("stripe", value)


@pytest.mark.parametrize("value, mode", [("sk_test_x", "test"), ("rk_test_x", "test"), ("sk_live_x", "live"),
                                         ("rk_live_x", "live"), ("re_x", None), ("sk_x", None)])
def test_stripe_mode(value, mode):
    assert stripe_mode(value) == mode


def test_mode_change_compares_with_the_secret_it_replaces(ledger):
    key = crypto.new_master_key()
    vault = SecretVault(ledger, key)
    vault.put("stripe", "main", "sk_test_" + "a" * 24)
    assert vault.mode_change("stripe", "main", "sk_test_" + "b" * 24) is None
    assert vault.mode_change("stripe", "main", "rk_live_" + "b" * 24) == ("test", "live")
    assert vault.mode_change("stripe", "other", "sk_live_" + "b" * 24) is None  # nothing replaced
    assert SecretVault(ledger, crypto.new_master_key()).mode_change("stripe", "main", "sk_live_x") is None
