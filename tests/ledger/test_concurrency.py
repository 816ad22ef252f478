"""Caps stay exact when many connections (threads, processes, replicas) admit at once."""

import multiprocessing
import sqlite3
import threading

import pytest

from keybrake_addon.ledger.base import LedgerBusy, LedgerUnavailable
from keybrake_addon.ledger.sqlite import SqliteLedger

from .conftest import USD, admit, money, with_key


def test_connections_reserve_exactly_up_to_the_cap(open_ledger):
    first = open_ledger()
    first.put_secret("stripe", "default", b"n" * 12, b"sealed", "fp", None)
    with_key(first, daily=500 * USD)
    ledgers = [first] + [open_ledger() for _ in range(5)]  # one connection each, like replicas
    admitted = []
    lock = threading.Lock()

    def worker(ledger):
        for _ in range(20):
            result = admit(ledger, 50)
            with lock:
                admitted.append(result.allowed)

    threads = [threading.Thread(target=worker, args=(ledger,)) for ledger in ledgers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert admitted.count(True) == 10 and admitted.count(False) == 110
    key = first.get_key("kbk_test")
    assert (key.reserved_micros, key.spent_micros, key.calls) == (500 * USD, 0, 10)


def _process_worker(path, results):
    ledger = SqliteLedger(path)
    results.put(sum(admit(ledger, 50).allowed for _ in range(50)))


def test_sqlite_processes_reserve_exactly_up_to_the_cap(tmp_path):
    path = tmp_path / "l.db"
    ledger = SqliteLedger(path)
    ledger.put_secret("stripe", "default", b"n" * 12, b"sealed", "fp", None)
    with_key(ledger, total=475 * USD).close()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_process_worker, args=(path, results)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert sum(results.get(timeout=5) for _ in workers) == 9


def _sqlite_ledger(path, **options):
    ledger = SqliteLedger(path, **options)
    ledger.put_secret("stripe", "default", b"n" * 12, b"sealed", "fp", None)
    return ledger


def test_a_locked_sqlite_database_is_unavailable_not_a_guess(tmp_path):
    path = tmp_path / "l.db"
    with_key(_sqlite_ledger(path), total=100 * USD).close()
    ledger = SqliteLedger(path, busy_timeout_s=0.2)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(LedgerUnavailable):
            admit(ledger, 10)
    finally:
        blocker.execute("ROLLBACK")
    assert admit(ledger, 10).allowed  # recovers by itself once the lock is gone


def test_a_never_waiting_connection_still_opens_while_another_process_briefly_writes(tmp_path):
    # Several proxies starting on one home at once: opening checks the schema, which needs the
    # write lock for a moment, even for the gate's connection that must never wait afterwards.
    path = tmp_path / "l.db"
    with_key(_sqlite_ledger(path), total=100 * USD).close()
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, lambda: blocker.execute("ROLLBACK"))
    release.start()
    ledger = SqliteLedger(path, busy_timeout_s=0)
    release.join()
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(LedgerBusy):  # once open, it does not wait for the lock
            admit(ledger, 10)
    finally:
        blocker.execute("ROLLBACK")
    assert admit(ledger, 10).allowed
    assert money(ledger) == (0, 10)
