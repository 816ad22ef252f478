"""Worker tokens and the forward proxy's credential check, on both backends."""

from datetime import timedelta

import pytest

from keybrake_addon.api.tokens import WorkerTokens, token_hash
from keybrake_addon.vault.vault_keys import hash_vault_key

from .conftest import KEY_HASH, OTHER_HASH, USD, with_key


def test_a_worker_token_is_a_credential_until_revoked(ledger):
    tokens = WorkerTokens(ledger)
    token, secret = tokens.create("ci")
    assert secret.startswith("kbw_") and token.token_id.startswith("kbwt_")
    assert ledger.proxy_credential_active(hash_vault_key(secret))
    assert not ledger.proxy_credential_active(hash_vault_key(secret + "x"))
    assert tokens.revoke(token.token_id)
    assert not ledger.proxy_credential_active(hash_vault_key(secret))
    assert tokens.revoke(token.token_id)  # twice is fine
    assert not tokens.revoke("kbwt_nope")


def test_only_the_hash_is_stored_and_listed_tokens_carry_no_secret(ledger):
    token, secret = WorkerTokens(ledger).create("ci")
    listed = ledger.list_worker_tokens()
    assert [r["token_id"] for r in listed] == [token.token_id]
    assert secret not in repr(listed)
    with ledger.database.reading() as tx:
        stored = tx.row("SELECT token_hash FROM worker_tokens WHERE token_id = ?", (token.token_id,))
    assert stored["token_hash"] == token_hash(secret) != secret


def test_worker_and_admin_tokens_are_apart(ledger):
    from keybrake_addon.api.tokens import AdminTokens

    _, admin_secret = AdminTokens(ledger).create("ops")
    worker, worker_secret = WorkerTokens(ledger).create("ci")
    # An admin token does not open the proxy, a worker token does not open the vault API.
    assert not ledger.proxy_credential_active(hash_vault_key(admin_secret))
    assert AdminTokens(ledger).verify(worker_secret) is None
    assert [t.token_id for t in WorkerTokens(ledger).list()] == [worker.token_id]


def test_a_vault_key_is_a_credential_while_active_by_the_database_clock(ledger, clock):
    with_key(ledger, total=100 * USD, expires_at=clock.now + timedelta(minutes=5))
    with_key(ledger, key_id="kbk_other", key_hash=OTHER_HASH, total=100 * USD)
    assert ledger.proxy_credential_active(KEY_HASH) and ledger.proxy_credential_active(OTHER_HASH)
    clock.advance(minutes=5)
    assert not ledger.proxy_credential_active(KEY_HASH)  # expired
    assert ledger.revoke_key("kbk_other")
    assert not ledger.proxy_credential_active(OTHER_HASH)  # revoked


@pytest.mark.parametrize("unknown", ["", "0" * 64])
def test_an_unknown_hash_is_no_credential(ledger, unknown):
    assert not ledger.proxy_credential_active(unknown)


def test_a_revoke_on_one_replica_is_seen_by_another(open_ledger):
    first, second = open_ledger(), open_ledger()
    token, secret = WorkerTokens(first).create(None)
    assert second.proxy_credential_active(hash_vault_key(secret))
    WorkerTokens(first).revoke(token.token_id)
    assert not second.proxy_credential_active(hash_vault_key(secret))
