"""Two replicas issuing with the same Idempotency-Key at once get one key between them.

PostgreSQL only: SQLite's write lock serialises issuances whole. On PostgreSQL the lookup of an
earlier issuance locks nothing while the other replica's record is uncommitted, so the insert is
where the race is decided.
"""

import threading

import psycopg

from keybrake_addon.ledger.base import IssuanceIdempotency
from keybrake_addon.ledger.postgres import PostgresLedger
from keybrake_addon.ledger.times import to_text, utc_now

from .conftest import spec

RETRY = IssuanceIdempotency("issue-run-42", "f" * 64, "kbt_ci")


def test_an_issuance_racing_another_replicas_returns_that_replicas_key(pg_url):
    ledger = PostgresLedger(pg_url, where="test")
    try:
        ledger.create_key("kbk_seed", "s" * 64, spec())  # the schema exists
        with psycopg.connect(pg_url) as other_replica:  # mid-issuance, its record not yet committed
            now = to_text(utc_now())
            other_replica.execute(
                "INSERT INTO vault_keys (key_id, key_hash, vendor, secret_name, label, allowlist, created_at) "
                "VALUES ('kbk_first', %s, 'stripe', 'default', 'run', '[]', %s)", ("a" * 64, now))
            other_replica.execute(
                "INSERT INTO issuances (token_id, idempotency_key, request_fingerprint, key_id, created_at) "
                "VALUES (%s, %s, %s, 'kbk_first', %s)", (RETRY.token_id, RETRY.key, RETRY.request_fingerprint, now))
            answer = {}
            racing = threading.Thread(target=lambda: answer.update(
                result=ledger.create_key("kbk_second", "b" * 64, spec(), RETRY)))
            racing.start()
            racing.join(0.5)
            assert racing.is_alive()  # waits on the other replica's uncommitted record
            other_replica.commit()
            racing.join(10)
        key, created = answer["result"]
        assert (key.key_id, created) == ("kbk_first", False)
        assert ledger.get_key("kbk_second") is None  # no second key was minted
    finally:
        ledger.close()
