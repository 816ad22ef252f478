"""The embedded SQLite backend: one file in the home, WAL mode.

Every write is one `BEGIN IMMEDIATE` transaction: it takes SQLite's write lock before reading
the totals, so no other thread or process can reserve between our read and our write. That is
what keeps a cap exact across parallel calls and several proxy processes on one host.
"""

import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from . import migrations
from .base import LedgerBusy, LedgerUnavailable
from .database import check_unique_ids, insert_sql, placeholders, update_sql
from .store import SqlLedger
from .times import utc_now

BUSY_TIMEOUT_S = 5.0
PAGE_SIZE = 2048
BACKSTOP_CHECKPOINT_PAGES = 40_000  # ~80 MB of WAL, reached only if the checkpoint thread stalls


class _SqliteTx:
    backend = "sqlite"

    def __init__(self, db: sqlite3.Connection, clock: Callable[[], datetime]) -> None:
        self._db = db
        self._clock = clock

    def rows(self, sql: str, params: Sequence = ()) -> list[sqlite3.Row]:
        return self._db.execute(sql, tuple(params)).fetchall()

    def row(self, sql: str, params: Sequence = ()) -> sqlite3.Row | None:
        return self._db.execute(sql, tuple(params)).fetchone()

    def run(self, sql: str, params: Sequence = ()) -> int:
        return self._db.execute(sql, tuple(params)).rowcount

    def run_many(self, sql: str, params: Iterable[Sequence]) -> None:
        self._db.executemany(sql, params)

    def insert_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence]) -> None:
        self._db.executemany(insert_sql(table, tuple(columns)), rows)

    def update_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence], *,
                    keep_if_null: frozenset[str] = frozenset()) -> None:
        check_unique_ids(rows)
        self._db.executemany(update_sql(table, tuple(columns), keep_if_null), rows)

    def one_of(self, column: str, values: Sequence[int] | Sequence[str]) -> tuple[str, list]:
        return f"{column} IN {placeholders(values)}", list(values)

    def prefetch_ids(self, most: dict[str, int]) -> None:
        pass  # no round trip to save: new_ids reads the file under the write lock

    def new_ids(self, counts: dict[str, int]) -> dict[str, list[int]]:
        # Safe under the write lock, which every writing transaction takes first. One statement
        # for every table: a batch pays for it once.
        wanted = [table for table, count in counts.items() if count]
        if not wanted:
            return {table: [] for table in counts}
        tops = self._db.execute("SELECT " + ", ".join(f"(SELECT COALESCE(MAX(id), 0) FROM {_table(t)})"
                                                      for t in wanted)).fetchone()
        found = dict(zip(wanted, tops))
        return {table: list(range(found[table] + 1, found[table] + 1 + count)) if count else []
                for table, count in counts.items()}

    def now(self) -> datetime:
        # SQLite's clock is this host's clock: the one every process sharing the file reads.
        return self._clock()

    def now_and_rows(self, queries: Sequence[tuple[str, Sequence] | None], *,
                     clock_after: int = 0) -> tuple[datetime, list[list[sqlite3.Row]]]:
        before = [[] if query is None else self.rows(*query) for query in queries[:clock_after]]
        now = self.now()
        return now, before + [[] if query is None else self.rows(*query) for query in queries[clock_after:]]

    def has_table(self, name: str) -> bool:
        return self.row("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)) is not None

    def plan_by_index(self) -> None:
        pass  # with no statistics (the ledger never runs ANALYZE), SQLite's planner takes an index where one fits

    def lock_schema(self) -> None:
        pass  # the write lock, taken by BEGIN IMMEDIATE, already keeps other migrators out

    def script(self, sql: str) -> None:
        """Run a migration script inside the open transaction (executescript would commit)."""
        for statement in _statements(sql):
            self._db.execute(statement)


def _table(name: str) -> str:
    if name not in ("reservations", "audit"):
        raise ValueError(f"no id sequence for {name!r}")
    return name


class SqliteDatabase:
    backend = "sqlite"
    lock_rows = ""  # the write lock, taken by BEGIN IMMEDIATE, already covers every row
    commit_can_be_lost = False  # a failed COMMIT rolled back; and a rolled-back batch's ids are used again

    def __init__(self, path: str | Path, *, busy_timeout_s: float = BUSY_TIMEOUT_S,
                 background_checkpoints: bool = False, create: bool = True, check: bool = True,
                 clock: Callable[[], datetime] = utc_now) -> None:
        """clock: the database's clock (tests set one; SQLite's own is this host's).
        background_checkpoints: a Checkpointer runs elsewhere, so commits leave the WAL to it.
        create: an empty database gets the schema; otherwise an empty one is an error.
        check: refuse a schema other than the latest (off only for `keybrake db`)."""
        self.path = Path(path)
        self.where = str(self.path)
        self._clock = clock
        self._lock = threading.Lock()
        try:
            # Opening may create or check the schema, which needs the write lock for a moment; a
            # connection meant never to wait (busy_timeout_s=0) must still wait for that, or starting
            # several proxies on one home at once fails at random.
            self._db = sqlite3.connect(self.path, timeout=max(busy_timeout_s, BUSY_TIMEOUT_S), isolation_level=None,
                                       check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            # Only a new database takes it. Every commit writes each page it touched into the WAL in
            # full; a call touches ~6 small rows and index entries, so 2 KiB pages halve the bytes
            # written per call (+7% reservations/s measured; see BENCHMARKS.md).
            self._db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash; only an OS crash may lose the last commits.
            self._db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as error:
            raise LedgerUnavailable(f"cannot open the ledger at {self.path}: {error}") from error
        try:
            if create:
                migrations.ensure_schema(self)
            elif check:
                migrations.check_schema(self)
            if background_checkpoints:
                # A commit that crosses the auto-checkpoint threshold copies the WAL into the database
                # and fsyncs, inside the request that happened to commit. Checkpointing on a thread
                # of its own keeps that off the request path; the high threshold is only a backstop.
                self._db.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_CHECKPOINT_PAGES}")
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self, *, pipelined: bool = False) -> Iterator[_SqliteTx]:
        """One write transaction, holding SQLite's write lock from its first statement.

        (`pipelined` changes nothing here: every statement is a call into this process.)"""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as error:
                if getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY:
                    raise LedgerBusy(f"the ledger is busy: {error}") from error
                raise LedgerUnavailable(f"the ledger is unavailable: {error}") from error
            try:
                yield _SqliteTx(self._db, self._clock)
                self._db.execute("COMMIT")
            except sqlite3.Error as error:
                self._rollback()
                raise LedgerUnavailable(f"the ledger is unavailable: {error}") from error
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the transaction is already gone (SQLite rolls back on some errors by itself)

    @contextmanager
    def reading(self) -> Iterator[_SqliteTx]:
        """The connection for a few reads in a row, translating errors like writes do."""
        with self._lock:
            try:
                yield _SqliteTx(self._db, self._clock)
            except sqlite3.Error as error:
                raise LedgerUnavailable(f"the ledger is unavailable: {error}") from error


def _statements(sql: str) -> list[str]:
    lines = [line.split("--", 1)[0] for line in sql.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


class SqliteLedger(SqlLedger):
    """The ledger in one SQLite file."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = BUSY_TIMEOUT_S,
                 background_checkpoints: bool = False, create: bool = True, check: bool = True,
                 clock: Callable[[], datetime] = utc_now) -> None:
        super().__init__(SqliteDatabase(path, busy_timeout_s=busy_timeout_s, background_checkpoints=background_checkpoints,
                                        create=create, check=check, clock=clock))
