"""A proxy process's housekeeping thread: WAL checkpoints and its liveness heartbeat.

Checkpoints: a commit that crosses SQLite's auto-checkpoint threshold copies the WAL into the
database and fsyncs inside whatever request committed. PASSIVE checkpoints here, on their own
connection, never wait for or block writers, and keep that work off the request path.

Heartbeat: every reservation records the proxy run that made it. A `pending` reservation whose
run has stopped beating (killed, crashed, host gone) will never be settled by that run, so
`keybrake keys show` reports it as unknown: money may have moved, and it stays counted.
"""

import os
import socket
import sqlite3
import threading
import uuid
from pathlib import Path

from .base import LedgerUnavailable
from .sqlite import BUSY_TIMEOUT_S
from .times import to_text, utc_now

CHECKPOINT_INTERVAL_S = 0.25
HEARTBEAT_INTERVAL_S = 2.0
# ~50 MB of WAL (2 KiB pages), under the 80 MB backstop. A RESTART stalls writers for its fsync
# (5-25 ms here), so it should be rare; but it stalls only writers, off the event loop, where the
# backstop's inline checkpoint stalls the whole loop.
RESTART_AFTER_FRAMES = 25_000
RESTART_WAIT_MS = 50
CONNECT_TIMEOUT_S = 1.0  # the housekeeping connection's usual wait for a lock


class Housekeeper:
    def __init__(self, database: Path) -> None:
        self.run_id = uuid.uuid4().hex[:16]
        self._database = database
        self._stopping = threading.Event()
        try:
            db = self._connect(timeout_s=BUSY_TIMEOUT_S)  # several proxies may be starting at once
            try:
                now = to_text(utc_now())
                db.execute("INSERT INTO proxy_runs (run_id, pid, host, started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?)",
                           (self.run_id, os.getpid(), socket.gethostname(), now, now))
                _reap_dead_local_runs(db)
            finally:
                db.close()
        except sqlite3.Error as error:
            raise LedgerUnavailable(f"cannot register this proxy run in {database}: {error}") from error
        self._thread = threading.Thread(target=self._run, name="keybrake-housekeeping", daemon=True)
        self._thread.start()

    def _connect(self, timeout_s: float = CONNECT_TIMEOUT_S) -> sqlite3.Connection:
        return sqlite3.connect(self._database, timeout=timeout_s, isolation_level=None, check_same_thread=False)

    def _run(self) -> None:
        db = self._connect()
        beats_every = max(1, round(HEARTBEAT_INTERVAL_S / CHECKPOINT_INTERVAL_S))
        tick = 0
        try:
            while not self._stopping.wait(CHECKPOINT_INTERVAL_S):
                tick += 1
                try:
                    _, wal_frames, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if wal_frames >= RESTART_AFTER_FRAMES:
                        self._restart_wal(db)
                    if tick % beats_every == 0:
                        db.execute("UPDATE proxy_runs SET heartbeat_at = ? WHERE run_id = ?",
                                   (to_text(utc_now()), self.run_id))
                        _reap_dead_local_runs(db)
                except sqlite3.Error:
                    pass  # busy or failing: the next round tries again (the auto-checkpoint is a backstop)
        finally:
            db.close()

    @staticmethod
    def _restart_wal(db: sqlite3.Connection) -> None:
        # Under steady load every PASSIVE checkpoint ends with newer frames still unbackfilled, so
        # SQLite never rewinds the WAL: it would grow to the auto-checkpoint backstop and one
        # unlucky request would pay a large inline checkpoint. RESTART (nearly all frames are
        # backfilled already, so it is short) makes the next writer start the WAL from its head.
        # It holds writers for its duration; their transactions move to the gate's DB thread.
        db.execute(f"PRAGMA busy_timeout={RESTART_WAIT_MS}")
        try:
            db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        finally:
            db.execute(f"PRAGMA busy_timeout={int(CONNECT_TIMEOUT_S * 1000)}")

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        db = self._connect()
        try:
            db.execute("UPDATE proxy_runs SET stopped_at = ? WHERE run_id = ?", (to_text(utc_now()), self.run_id))
        except sqlite3.Error:
            pass  # its holds are settled or counted either way; only the unknown listing is later
        finally:
            db.close()


def reap_dead_local_runs(store) -> None:
    """For readers (`keybrake keys show`): the same check, best effort, in one short transaction."""
    try:
        with store.transaction() as db:
            _reap_dead_local_runs(db)
    except Exception:  # noqa: BLE001 - a read-only or busy database must not stop a report
        pass


def _reap_dead_local_runs(db: sqlite3.Connection) -> None:
    """Mark runs of this host whose process is gone as stopped, without waiting for the heartbeat
    to go stale: a proxy restarted after kill -9 shows its predecessor's holds as unknown at once."""
    host = socket.gethostname()
    for run_id, pid in db.execute("SELECT run_id, pid FROM proxy_runs WHERE stopped_at IS NULL AND host = ?",
                                  (host,)).fetchall():
        if not _alive(pid):
            db.execute("UPDATE proxy_runs SET stopped_at = ? WHERE run_id = ? AND stopped_at IS NULL",
                       (to_text(utc_now()), run_id))


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

