"""Deleting secrets, and which keys still use one: the same on SQLite and PostgreSQL."""

from dataclasses import replace
from datetime import timedelta

from .conftest import USD, admit, spec


def keys_of(records) -> list[str]:
    return [record.key_id for record in records]


def test_only_active_keys_of_that_secret_are_its_users(ledger, clock):
    ledger.put_secret("stripe", "other", b"n" * 12, b"sealed", "fp", None)
    ledger.create_key("kbk_a", "a" * 64, spec(total=USD, label="run-a"))
    ledger.create_key("kbk_revoked", "r" * 64, spec(total=USD))
    ledger.revoke_key("kbk_revoked")
    ledger.create_key("kbk_expiring", "e" * 64, spec(total=USD, expires_at=clock.now + timedelta(hours=1)))
    ledger.create_key("kbk_resend", "s" * 64, spec(total=USD, vendor="resend"))  # another vendor's "default"
    ledger.create_key("kbk_other", "o" * 64, replace(spec(total=USD), secret_name="other"))
    users = ledger.keys_using_secret("stripe", "default")
    assert keys_of(users) == ["kbk_a", "kbk_expiring"]
    assert users[0].spec.label == "run-a"
    clock.advance(hours=1)  # the database's clock decides expiry
    assert keys_of(ledger.keys_using_secret("stripe", "default")) == ["kbk_a"]
    assert keys_of(ledger.keys_using_secret("stripe", "other")) == ["kbk_other"]


def test_a_secret_in_use_is_deleted_only_when_forced(ledger):
    ledger.create_key("kbk_a", "a" * 64, spec(total=10 * USD))
    assert keys_of(ledger.delete_secret("stripe", "default")[1]) == ["kbk_a"]
    assert ledger.delete_secret("stripe", "default")[0] is False
    assert ledger.get_secret("stripe", "default") is not None
    assert admit(ledger, 1, key_hash="a" * 64).secret is not None
    deleted, cut_off = ledger.delete_secret("stripe", "default", force=True)
    assert deleted and keys_of(cut_off) == ["kbk_a"]
    assert ledger.get_secret("stripe", "default") is None and ledger.list_secrets() == []
    # The key no longer has a secret to swap in: the gate refuses a call with no secret to send.
    assert admit(ledger, 1, key_hash="a" * 64).secret is None
    assert ledger.delete_secret("stripe", "default") == (False, [])  # gone: nothing to delete, nobody to list


def test_a_secret_nobody_uses_is_deleted_and_a_missing_one_is_not(ledger):
    ledger.create_key("kbk_a", "a" * 64, spec(total=USD))
    ledger.revoke_key("kbk_a")
    assert ledger.delete_secret("stripe", "default") == (True, [])
    assert ledger.delete_secret("stripe", "default") == (False, [])
    assert ledger.delete_secret("twilio", "nope", force=True) == (False, [])


def test_a_delete_on_one_replica_is_seen_by_another(open_ledger):
    first, second = open_ledger(), open_ledger()
    first.put_secret("stripe", "default", b"n" * 12, b"sealed", "fp", None)
    assert second.get_secret("stripe", "default") is not None
    assert first.delete_secret("stripe", "default") == (True, [])
    assert second.get_secret("stripe", "default") is None
