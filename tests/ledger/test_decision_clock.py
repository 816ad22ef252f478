"""A PostgreSQL batch decides by the database's clock read once it holds its keys' locks.

The lock, the clock and the batch's reads go to the server in one pipeline. Read before the lock,
the clock would be the moment a batch began to wait: a batch that waited across midnight would
book its calls on the day before.
"""

import threading
import time

import psycopg

from keybrake_addon.ledger.postgres import PostgresLedger
from keybrake_addon.ledger.times import to_text

from .conftest import admit, with_key


def test_a_batch_that_waits_for_its_key_decides_by_the_clock_after_the_wait(pg_url):
    ledger = PostgresLedger(pg_url, where="test")
    try:
        with_key(ledger)
        admit(ledger, 1)  # prepared and warm
        with psycopg.connect(pg_url) as holder:
            holder.execute("SELECT 1 FROM vault_keys WHERE key_id = 'kbk_test' FOR UPDATE")
            admitted = {}
            waiting = threading.Thread(target=lambda: admitted.update(admission=admit(ledger, 1)))
            waiting.start()
            time.sleep(1.0)
            assert not admitted, "the admit did not wait for the key's lock"
            released_at = holder.execute("SELECT clock_timestamp()").fetchone()[0]
            holder.commit()
        waiting.join(10)
        admission = admitted["admission"]
        with psycopg.connect(pg_url) as reader:
            stamped = reader.execute("SELECT ts FROM audit WHERE id = %s", (admission.audit_id,)).fetchone()[0]
            created = reader.execute("SELECT created_at FROM reservations WHERE id = %s",
                                     (admission.reservation_id,)).fetchone()[0]
    finally:
        ledger.close()
    assert stamped >= to_text(released_at) and created >= to_text(released_at), (stamped, released_at)
