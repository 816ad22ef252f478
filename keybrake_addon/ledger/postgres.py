"""The PostgreSQL backend, for several replicas on several hosts sharing one ledger.

psycopg 3 with its connection pool: a synchronous driver is what the ledger's executor thread
wants (one batch at a time, one transaction each), psycopg's pipeline mode sends a batch's
inserts in one round trip, and the same code serves the CLI. Decisions lock the key rows they
read (`SELECT ... FOR UPDATE`, in key order) and read the server's clock after the locks.

Every wait is bounded: connecting, taking a connection from the pool, each statement and each
lock. A server that is gone, restarting or hung costs a caller a few seconds at most, and the
caller answers 503: nothing is forwarded undecided.
"""

import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import datetime
from functools import lru_cache

import psycopg
import psycopg_pool
from psycopg import errors
from psycopg.rows import dict_row

from . import migrations
from .base import LedgerConflict, LedgerRefusedValue, LedgerUnavailable
from .database import check_unique_ids
from .store import SqlLedger

CONNECT_TIMEOUT_S = 2
STATEMENT_TIMEOUT_MS = 5000
POOL_SIZE = 4
# A session idle inside a transaction is ended after this. Shorter than the lock wait: a process
# frozen holding a key's lock (SIGSTOP, a debugger, Ctrl-Z, a paused host; its kernel still answers
# keepalives) would otherwise fail every other replica's batches that touch that key, for as long
# as it stays frozen. The gate's transactions pause between statements for milliseconds.
IDLE_IN_TRANSACTION_TIMEOUT_MS = 2000
SCHEMA_IDLE_TIMEOUT_MS = 60_000  # `db copy` reads its source between writes in the schema transaction
# How text taken out of JSON becomes each column type the batch writes use (not bytea: its text
# form is an escape format, not the bytes).
_FROM_JSON_TEXT = {"text": "", "bigint": "::bigint", "integer": "::integer", "double precision": "::double precision"}
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
MIGRATION_LOCK = 0x6B62_6C64  # an advisory lock id: one replica migrates at a time


@lru_cache(maxsize=512)
def _pyformat(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


class _PostgresTx:
    backend = "postgresql"

    def __init__(self, connection: psycopg.Connection, clock: Callable[[], datetime] | None,
                 pipeline: psycopg.Pipeline | None = None, column_types: dict | None = None,
                 statements: dict | None = None) -> None:
        self._connection = connection
        self._clock = clock
        self._pipeline = pipeline  # statements are queued; reading a result sends what is queued
        self._column_types = {} if column_types is None else column_types  # table -> column -> SQL type
        # The batch writes' SQL by (kind, table, columns, ...): built once per process, as the
        # column types are read once (rebuilt for every batch, it took a tenth of the ledger thread's time).
        self._statements = {} if statements is None else statements
        self._ids_wanted: dict[str, int] | None = None  # see prefetch_ids: drawn with the clock
        self._prefetched: tuple[dict[str, int], dict] | None = None  # those counts, and the row that drew them
        self._held: list[tuple[str, Sequence | list[Sequence], bool]] = []  # see _hold: (sql, params, many)

    def rows(self, sql: str, params: Sequence = ()) -> list[dict]:
        return self._answered(self._send(_pyformat(sql), tuple(params))).fetchall()

    def row(self, sql: str, params: Sequence = ()) -> dict | None:
        return self._answered(self._send(_pyformat(sql), tuple(params))).fetchone()

    def run(self, sql: str, params: Sequence = ()) -> int:
        return self._answered(self._send(_pyformat(sql), tuple(params))).rowcount

    def _send(self, sql: str, params: Sequence = ()) -> psycopg.Cursor:
        """A statement whose answer is wanted: the writes held before it go first, in order."""
        self.send_held()
        return self._connection.execute(sql, params)

    def _hold(self, sql: str, params: Sequence | list[Sequence], *, many: bool = False) -> None:
        """A write nobody reads the answer of. In a pipeline it is held until the next read or the
        COMMIT, then sent with it: psycopg sends a pipelined statement at once, and the server,
        having had a statement with no Sync after it, waits for the rest with no bound. A process
        frozen while building a batch's writes would hold its keys' locks for as long as it stays
        frozen; held, the writes leave the session idle in its transaction (see _answered)."""
        if self._pipeline is None:
            self._write(sql, params, many)
        else:
            self._held.append((sql, params, many))

    def send_held(self) -> None:
        held, self._held = self._held, []
        for sql, params, many in held:
            self._write(sql, params, many)

    def _write(self, sql: str, params, many: bool) -> None:
        if many:
            with self._connection.cursor() as cursor:
                cursor.executemany(sql, params)
        else:
            self._connection.execute(sql, params)

    def _answered(self, cursor: psycopg.Cursor, pipeline: psycopg.Pipeline | None = None) -> psycopg.Cursor:
        """The cursor once the server has answered everything sent before it.

        In a pipeline, by a Sync rather than the Flush psycopg sends to read a result: after a Sync
        the server counts the session idle in its transaction until the next statement, so the
        idle bound (IDLE_IN_TRANSACTION_TIMEOUT_MS) ends a process frozen between two round trips
        of a batch. After a Flush it waits for the rest of the pipeline with no bound at all, and
        the key rows the batch locked stay locked for as long as the process stays frozen. Either
        is one round trip."""
        if (pipeline := pipeline or self._pipeline) is not None:
            pipeline.sync()
        return cursor

    def run_many(self, sql: str, params: Iterable[Sequence]) -> None:
        self._hold(_pyformat(sql), [tuple(p) for p in params], many=True)

    # A batch's rows go as one JSON array of arrays, unpacked by the server: one statement for the
    # whole batch. executemany costs a Bind and an Execute per row, and psycopg's array parameters
    # ~1.7 us of client CPU per value; json.dumps is C (see BENCHMARKS.md).
    def insert_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence]) -> None:
        if not rows:
            return
        statement = ("insert", table, tuple(columns))
        if (sql := self._statements.get(statement)) is None:
            sql = self._statements[statement] = (
                f"INSERT INTO {_identifier(table)} ({', '.join(map(_identifier, columns))}) "
                f"SELECT {self._unpacked(table, columns)} FROM json_array_elements(%s::json) AS r")
        self._hold(sql, (_json_rows(rows, len(columns)),))

    def update_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence], *,
                    keep_if_null: frozenset[str] = frozenset()) -> None:
        check_unique_ids(rows)
        if not rows:
            return
        if "id" in columns:
            raise ValueError("update_rows: rows are found by id, which cannot change")
        statement = ("update", table, tuple(columns), keep_if_null)
        if (sql := self._statements.get(statement)) is None:
            names = [_identifier(name) for name in columns]
            assignments = ", ".join(f"{name} = COALESCE(v.{name}, t.{name})" if name in keep_if_null
                                    else f"{name} = v.{name}" for name in names)
            # The ids again as an array: the planner takes json_array_elements for 100 rows and would
            # join them to a scan of the whole table; `= ANY` gives it the primary key's index.
            sql = self._statements[statement] = (
                f"UPDATE {_identifier(table)} AS t SET {assignments} FROM (SELECT "
                f"{self._unpacked(table, [*columns, 'id'])} FROM json_array_elements(%s::json) AS r) AS v "
                "WHERE t.id = v.id AND t.id = ANY(%s::bigint[])")
        self._hold(sql, (_json_rows(rows, len(columns) + 1), [row[-1] for row in rows]))

    def _unpacked(self, table: str, columns: Sequence[str]) -> str:
        """Each column from its place in a row `r` (a JSON array), cast to the column's type."""
        types = self._column_types.get(table)
        if types is None or any(name not in types for name in columns):
            # Read once per table and process (a read in a pipeline costs a round trip).
            types = {row["name"]: row["type"] for row in self._answered(self._send(
                "SELECT attname AS name, format_type(atttypid, atttypmod) AS type FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped", (table,))).fetchall()}
            self._column_types[table] = types
        unpacked = []
        for place, name in enumerate(columns):
            kind = types.get(name)
            if kind is None:
                raise ValueError(f"{table} has no column {name}")
            if kind not in _FROM_JSON_TEXT:
                raise ValueError(f"{table}.{name} is {kind}, which does not travel as JSON text: use run_many")
            unpacked.append(f"(r->>{place}){_FROM_JSON_TEXT[kind]} AS {_identifier(name)}")
        return ", ".join(unpacked)

    def one_of(self, column: str, values: Sequence[int] | Sequence[str]) -> tuple[str, list]:
        kind = "text" if values and isinstance(values[0], str) else "bigint"
        return f"{_identifier(column)} = ANY(?::{kind}[])", [list(values)]

    def prefetch_ids(self, most: dict[str, int]) -> None:
        if any(most.values()):
            self._ids_wanted = most  # drawn by now_and_rows's clock statement; else new_ids draws them

    def new_ids(self, counts: dict[str, int]) -> dict[str, list[int]]:
        wanted = [table for table, count in counts.items() if count]
        if not wanted:
            return {table: [] for table in counts}
        prefetched, self._prefetched, self._ids_wanted = self._prefetched, None, None
        if prefetched is not None and all(count <= prefetched[0].get(table, 0) for table, count in counts.items()):
            row = prefetched[1]  # came back with an earlier round trip
        else:
            columns, params = _ids_columns(counts)
            row = self._answered(self._send("SELECT " + columns, params)).fetchone()
        # Ids drawn and not used are a gap in the sequence, as a rolled-back batch's are.
        return {table: list(row[table])[:count] if count else [] for table, count in counts.items()}

    def now(self) -> datetime:
        if self._clock is not None:  # a test's clock
            return self._clock()
        # clock_timestamp(), not now(): the time of this statement, after the locks were taken.
        return self._answered(self._send("SELECT clock_timestamp() AS now")).fetchone()["now"]

    def now_and_rows(self, queries: Sequence[tuple[str, Sequence] | None], *,
                     clock_after: int = 0) -> tuple[datetime, list[list[dict]]]:
        # A nested pipeline would cost a round trip of its own on leaving it. The server runs a
        # pipeline's statements in order, so the clock is read once the locks before it are held.
        # Ids asked for by prefetch_ids come in the clock's statement: one statement fewer.
        def send(query):
            return None if query is None else self._connection.execute(_pyformat(query[0]), tuple(query[1]))

        self.send_held()
        wanted, self._ids_wanted = self._ids_wanted, None
        clock_sql, clock_params = ([] if self._clock is not None else ["clock_timestamp() AS now"]), ()
        if wanted:
            ids_sql, clock_params = _ids_columns(wanted)
            clock_sql.append(ids_sql)
        with nullcontext(self._pipeline) if self._pipeline is not None else self._connection.pipeline() as pipeline:
            cursors = [send(query) for query in queries[:clock_after]]
            clock = self._connection.execute("SELECT " + ", ".join(clock_sql), clock_params) if clock_sql else None
            cursors += [send(query) for query in queries[clock_after:]]
            self._answered(clock, pipeline)
            clock_row = clock.fetchone() if clock is not None else None
            if wanted:
                self._prefetched = wanted, clock_row
            now = self._clock() if self._clock is not None else clock_row["now"]
            return now, [[] if cursor is None else cursor.fetchall() for cursor in cursors]

    def has_table(self, name: str) -> bool:
        return self.row("SELECT to_regclass(?) AS found", (name,))["found"] is not None

    def plan_by_index(self) -> None:
        # psycopg prepares a statement on its fifth run, and the server may keep the generic plan it
        # made then for good: made while a table was nearly empty, that plan scans the table, and
        # goes on scanning as the table grows until an ANALYZE happens to invalidate it. A scan's
        # cost grows with the audit trail, on every batch; an index lookup's does not.
        # And plans made once per prepared statement: with seq scans off, the server finds every
        # generic plan dearer than a custom one and would plan each statement again at every run.
        self._connection.execute("SELECT set_config('enable_seqscan', 'off', true), "
                                 "set_config('plan_cache_mode', 'force_generic_plan', true)")

    def lock_schema(self) -> None:
        """One replica migrates at a time; the others wait (up to the lock timeout, 5 s: a replica
        opened during a long upgrade fails and must be started again), then find the schema current.

        The transaction that takes this lock changes the schema (init, upgrade, a copy's target),
        and runs without the statement timeout: rebuilding an index of a large ledger takes
        minutes, and cancelled at 5 s an upgrade could never finish. It may also pause between
        statements longer than the gate's idle bound (a copy reads its source between writes), so
        that bound is SCHEMA_IDLE_TIMEOUT_MS here. SET LOCAL ends with this transaction, so the
        pooled connection goes back to the gate with its own bounds.

        lock_timeout stays the connection's. While this transaction waits for a table's lock, the
        server queues every later request for that table behind it, so each second it waits is a
        second every replica's gate stalls. The gate's transactions hold their locks for
        milliseconds, so the short wait is enough past them; what holds a lock longer (a report,
        a prune, a copy) makes the upgrade fail, with nothing kept, and it can be run again.
        """
        self.allow_long_pauses()
        self.row("SELECT set_config('statement_timeout', '0', true) AS timeout, "
                 "pg_advisory_xact_lock(?) AS locked", (MIGRATION_LOCK,))

    def allow_long_pauses(self) -> None:
        """This transaction may pause between statements for up to SCHEMA_IDLE_TIMEOUT_MS, not the
        gate's idle bound: a schema change, and both sides of a copy (the source is read between
        the target's writes)."""
        self.row("SELECT set_config('idle_in_transaction_session_timeout', ?, true) AS idle",
                 (str(SCHEMA_IDLE_TIMEOUT_MS),))

    def script(self, sql: str) -> None:
        self.send_held()
        self._connection.execute(sql)  # no parameters: a `%` in the script is SQL, not a placeholder


class PostgresDatabase:
    backend = "postgresql"
    lock_rows = " FOR UPDATE"
    commit_can_be_lost = True  # ids come from sequences

    def __init__(self, conninfo: str, *, where: str, pool_size: int = POOL_SIZE,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S, statement_timeout_ms: int = STATEMENT_TIMEOUT_MS,
                 create: bool = True, check: bool = True, clock: Callable[[], datetime] | None = None) -> None:
        """clock: only for tests, which decide what time it is; otherwise the server's clock decides."""
        self.where = where
        self._clock = clock
        self._column_types: dict[str, dict[str, str]] = {}
        self._statements: dict[tuple, str] = {}
        self._connect_timeout_s = connect_timeout_s
        options = (f"-c statement_timeout={statement_timeout_ms} -c lock_timeout={statement_timeout_ms} "
                   f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS}")
        self._pool = psycopg_pool.ConnectionPool(
            conninfo, min_size=1, max_size=pool_size, open=False, timeout=connect_timeout_s,
            reconnect_timeout=0,  # keep trying for ever: a replica recovers by itself when the server is back
            # autocommit: transaction() sends BEGIN either way, and a pipelined batch sends its own.
            kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": max(1, int(connect_timeout_s)), "options": options,
                    "application_name": "keybrake", "keepalives": 1, "keepalives_idle": 5,
                    "keepalives_interval": 2, "keepalives_count": 2, "tcp_user_timeout": statement_timeout_ms},
            check=psycopg_pool.ConnectionPool.check_connection)
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
        except psycopg_pool.PoolTimeout as error:
            self._pool.close(timeout=0)
            raise LedgerUnavailable(f"cannot reach the ledger at {where} within {connect_timeout_s:g} s") from error
        try:
            if create:
                migrations.ensure_schema(self)
            elif check:
                migrations.check_schema(self)
        except BaseException:
            self._pool.close(timeout=1)
            raise

    def close(self) -> None:
        self._pool.close(timeout=2)

    @contextmanager
    def transaction(self, *, pipelined: bool = False) -> Iterator[_PostgresTx]:
        with self._connection() as connection:
            try:
                with _pipelined_transaction(connection) if pipelined else _transaction(connection) as pipeline:
                    tx = _PostgresTx(connection, self._clock, pipeline, self._column_types, self._statements)
                    yield tx
                    tx.send_held()  # then the COMMIT, in one burst
            except (errors.DeadlockDetected, errors.SerializationFailure) as error:
                raise LedgerConflict(f"the ledger aborted a transaction: {type(error).__name__}") from error
            except errors.DataError as error:
                raise LedgerRefusedValue(f"the ledger refused a value: {_describe(error)}") from error
            except psycopg.Error as error:
                raise LedgerUnavailable(f"the ledger is unavailable: {_describe(error)}") from error

    reading = transaction  # a read-only use of the same: one snapshot, errors translated alike

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        try:
            with self._pool.connection(timeout=self._connect_timeout_s) as connection:
                yield connection
        except psycopg_pool.PoolTimeout as error:
            raise LedgerUnavailable(f"cannot reach the ledger at {self.where}: no connection within "
                                    f"{self._connect_timeout_s:g} s") from error
        except psycopg.OperationalError as error:
            raise LedgerUnavailable(f"the ledger at {self.where} is unavailable: {_describe(error)}") from error


@contextmanager
def _transaction(connection: psycopg.Connection) -> Iterator[None]:
    with connection.transaction():
        yield None


@contextmanager
def _pipelined_transaction(connection: psycopg.Connection) -> Iterator[psycopg.Pipeline]:
    """BEGIN and COMMIT sent as statements of the pipeline, the COMMIT with the writes before it.

    psycopg's own transaction() in a pipeline ends with a round trip of its own before the COMMIT
    (a Sync, then a Flush). A Flush read after a Sync stops the server's idle-in-transaction
    timer, so a process frozen while that round trip's answer waited kept its keys' locks with no
    bound; and that round trip was one of a batch's few. Here the writes, the COMMIT and the Sync
    that leaving the pipeline sends go together: one round trip. The connection is in autocommit
    mode (see PostgresDatabase), so BEGIN and COMMIT are ours to send."""
    try:
        with connection.pipeline() as pipeline:
            connection.execute("BEGIN")
            yield pipeline
            commit = connection.execute("COMMIT")
    except BaseException:
        _roll_back(connection)
        raise
    if commit.statusmessage != "COMMIT":
        # The server answers COMMIT in a failed transaction with ROLLBACK, and no error: only a
        # failed statement whose error was swallowed gets here, and nothing was committed.
        raise LedgerUnavailable(f"the ledger rolled the transaction back at COMMIT ({commit.statusmessage})")


def _roll_back(connection: psycopg.Connection) -> None:
    """End a failed pipelined transaction, so that its connection goes back to the pool clean."""
    if connection.info.transaction_status in (psycopg.pq.TransactionStatus.INTRANS,
                                              psycopg.pq.TransactionStatus.INERROR):
        try:
            connection.execute("ROLLBACK")
        except psycopg.Error:
            pass  # a connection that cannot roll back is discarded by the pool on return


def _ids_columns(counts: dict[str, int]) -> tuple[str, tuple]:
    """Select-list items drawing `count` new ids from each table's sequence, as arrays named by table."""
    wanted = [table for table, count in counts.items() if count]
    for table in wanted:
        if table not in ("reservations", "audit"):
            raise ValueError(f"no id sequence for {table!r}")
    return (", ".join(f"ARRAY(SELECT nextval('{t}_id_seq') FROM generate_series(1, %s)) AS {t}" for t in wanted),
            tuple(counts[t] for t in wanted))


def _identifier(name: str) -> str:
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return name


def _json_rows(rows: Sequence[Sequence], width: int) -> str:
    if any(len(row) != width for row in rows):
        raise ValueError(f"each row must have {width} values, one per column")  # as executemany refuses it
    return json.dumps(rows, allow_nan=False, separators=(",", ":"))


def _describe(error: psycopg.Error) -> str:
    """The error's class and SQLSTATE: never its text, which can quote a statement's parameters."""
    return f"{type(error).__name__}" + (f" ({error.sqlstate})" if error.sqlstate else "")


class PostgresLedger(SqlLedger):
    """The ledger in a PostgreSQL database shared by every replica."""

    def __init__(self, conninfo: str, *, where: str, create: bool = True, check: bool = True, **options) -> None:
        super().__init__(PostgresDatabase(conninfo, where=where, create=create, check=check, **options))
