"""A proxy process's housekeeping thread: its liveness heartbeat, and SQLite's WAL checkpoints.

Heartbeat: every reservation records the proxy run that made it. A `pending` reservation whose
run has stopped beating (killed, crashed, host gone) will never be settled by that run, so
`keybrake keys show` reports it as unknown: money may have moved, and it stays counted.

Checkpoints (SQLite only): a commit that crosses SQLite's auto-checkpoint threshold copies the
WAL into the database and fsyncs inside whatever request committed. PASSIVE checkpoints here,
on their own connection, never wait for or block writers, and keep that work off the request path.

Alert sweeps: keys that expired with money reserved, and pending holds of proxy runs that are
gone, change state without any transaction saying so; every ALERT_SWEEP_INTERVAL_S this thread
looks for them and writes their events (alert_store.Sweeper), if anyone subscribes to them.
"""

import os
import socket
import sqlite3
import threading
import uuid
from pathlib import Path

from . import alert_store
from .base import LedgerUnavailable

CHECKPOINT_INTERVAL_S = 0.25
HEARTBEAT_INTERVAL_S = 2.0
ALERT_SWEEP_INTERVAL_S = 15.0
# ~50 MB of WAL (2 KiB pages), under the 80 MB backstop. A RESTART stalls writers for its fsync
# (5-25 ms here), so it should be rare; but it stalls only writers, off the event loop, where the
# backstop's inline checkpoint stalls the whole loop.
RESTART_AFTER_FRAMES = 25_000
RESTART_WAIT_MS = 50
CONNECT_TIMEOUT_S = 1.0  # the checkpoint connection's usual wait for a lock


class Housekeeper:
    def __init__(self, installation) -> None:
        self.run_id = uuid.uuid4().hex[:16]
        self._ledger = installation.ledger
        self._stopping = threading.Event()
        try:
            self._ledger.register_run(self.run_id, os.getpid(), socket.gethostname())
        except LedgerUnavailable as error:
            raise LedgerUnavailable(f"cannot register this proxy run: {error}") from error
        reap_dead_local_runs(self._ledger)
        self._sweeper = alert_store.Sweeper(self._ledger)
        database = installation.database
        self._checkpoints = _Checkpoints(database.path) if database.backend == "sqlite" else None
        self._thread = threading.Thread(target=self._run, name="keybrake-housekeeping", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = CHECKPOINT_INTERVAL_S if self._checkpoints else HEARTBEAT_INTERVAL_S
        beats_every = max(1, round(HEARTBEAT_INTERVAL_S / interval))
        sweeps_every = max(1, round(ALERT_SWEEP_INTERVAL_S / interval))
        tick = 0
        try:
            while not self._stopping.wait(interval):
                tick += 1
                if self._checkpoints:
                    self._checkpoints.run()
                if tick % beats_every == 0:
                    try:
                        self._ledger.beat(self.run_id)
                    except LedgerUnavailable:
                        pass  # the next beat tries again; a long silence shows our holds as unknown
                    reap_dead_local_runs(self._ledger)
                if tick % sweeps_every == 0:
                    try:
                        self._sweeper.sweep()
                    except LedgerUnavailable:
                        pass  # the next round looks again: nothing is lost, the sweep finds the same
        finally:
            if self._checkpoints:
                self._checkpoints.close()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        try:
            self._ledger.stop_run(self.run_id)
        except LedgerUnavailable:
            pass  # its holds are settled or counted either way; only the unknown listing is later


class _Checkpoints:
    def __init__(self, database: Path) -> None:
        self._db = sqlite3.connect(database, timeout=CONNECT_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)

    def run(self) -> None:
        try:
            _, wal_frames, _ = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if wal_frames >= RESTART_AFTER_FRAMES:
                self._restart_wal()
        except sqlite3.Error:
            pass  # busy or failing: the next round tries again (the auto-checkpoint is a backstop)

    def _restart_wal(self) -> None:
        # Under steady load every PASSIVE checkpoint ends with newer frames still unbackfilled, so
        # SQLite never rewinds the WAL: it would grow to the auto-checkpoint backstop and one
        # unlucky request would pay a large inline checkpoint. RESTART (nearly all frames are
        # backfilled already, so it is short) makes the next writer start the WAL from its head.
        # It holds writers for its duration; their transactions move to the ledger thread.
        self._db.execute(f"PRAGMA busy_timeout={RESTART_WAIT_MS}")
        try:
            self._db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        finally:
            self._db.execute(f"PRAGMA busy_timeout={int(CONNECT_TIMEOUT_S * 1000)}")

    def close(self) -> None:
        self._db.close()


def reap_dead_local_runs(ledger) -> None:
    """Mark runs of this host whose process is gone as stopped (best effort: a read-only or busy
    database must not stop a report)."""
    try:
        ledger.reap_local_runs(_alive)
    except Exception:  # noqa: BLE001
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    try:  # a killed child its parent has not reaped yet is a zombie: gone for our purposes
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True
