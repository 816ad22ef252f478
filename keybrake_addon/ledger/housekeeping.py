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

from .times import to_text, utc_now

CHECKPOINT_INTERVAL_S = 0.25
HEARTBEAT_INTERVAL_S = 2.0


class Housekeeper:
    def __init__(self, database: Path) -> None:
        self.run_id = uuid.uuid4().hex[:16]
        self._database = database
        self._stopping = threading.Event()
        db = self._connect()
        try:
            now = to_text(utc_now())
            db.execute("INSERT INTO proxy_runs (run_id, pid, host, started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?)",
                       (self.run_id, os.getpid(), socket.gethostname(), now, now))
        finally:
            db.close()
        self._thread = threading.Thread(target=self._run, name="keybrake-housekeeping", daemon=True)
        self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self._database, timeout=1.0, isolation_level=None, check_same_thread=False)

    def _run(self) -> None:
        db = self._connect()
        beats_every = max(1, round(HEARTBEAT_INTERVAL_S / CHECKPOINT_INTERVAL_S))
        tick = 0
        try:
            while not self._stopping.wait(CHECKPOINT_INTERVAL_S):
                tick += 1
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if tick % beats_every == 0:
                        db.execute("UPDATE proxy_runs SET heartbeat_at = ? WHERE run_id = ?",
                                   (to_text(utc_now()), self.run_id))
                except sqlite3.Error:
                    pass  # busy or failing: the next round tries again (the auto-checkpoint is a backstop)
        finally:
            db.close()

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
