"""What a ledger backend's connection offers the store: transactions, rows, ids, its clock.

SQLite and PostgreSQL differ in placeholders, locking, id allocation and errors; the store's
SQL and its decisions are the same for both. A backend translates `?` placeholders itself.
"""

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from functools import lru_cache
from datetime import datetime
from typing import Any, Protocol

Row = Any  # a mapping-like row: row["column"]; dict(row) gives a plain dict


class Tx(Protocol):
    """One open transaction."""

    backend: str  # "sqlite" | "postgresql": which script of a migration it runs

    def rows(self, sql: str, params: Sequence = ()) -> list[Row]: ...
    def row(self, sql: str, params: Sequence = ()) -> Row | None: ...
    def run(self, sql: str, params: Sequence = ()) -> int: ...  # the number of rows changed
    def run_many(self, sql: str, params: Iterable[Sequence]) -> None: ...
    # Many rows of one table in one statement where the backend can (PostgreSQL: one JSON text).
    def insert_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence]) -> None: ...
    # Each row: the new values of `columns`, then its id. A column in keep_if_null keeps its old
    # value where the new one is None. Ids must not repeat (which update would win?).
    def update_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence], *,
                    keep_if_null: frozenset[str] = frozenset()) -> None: ...
    # A condition that `column` is one of `values` (ints or strs), and its parameters. PostgreSQL's
    # takes one array, so the statement's text is the same for any number of values: psycopg
    # converts it once and the server prepares it once.
    def one_of(self, column: str, values: Sequence[int] | Sequence[str]) -> tuple[str, list]: ...
    def new_ids(self, counts: dict[str, int]) -> dict[str, list[int]]: ...  # per table: ids nobody else will use
    # At most these many ids will be asked for: PostgreSQL draws them with the next round trip, so
    # that new_ids costs none. Some may go unused: a gap, as after a rollback.
    def prefetch_ids(self, most: dict[str, int]) -> None: ...
    def now(self) -> datetime: ...  # the database's clock, read now
    # Each query's rows and the clock, read together: one round trip where the backend can. The
    # clock is read after the first `clock_after` queries (the locks it must not be read before).
    # A query given as None is not sent, and has no rows.
    def now_and_rows(self, queries: Sequence[tuple[str, Sequence] | None], *,
                     clock_after: int = 0) -> tuple[datetime, list[list[Row]]]: ...
    def has_table(self, name: str) -> bool: ...
    # This transaction finds every row by key or id: the planner must not scan a table instead.
    def plan_by_index(self) -> None: ...
    def lock_schema(self) -> None: ...  # keep other migrators out until this transaction ends
    def script(self, sql: str) -> None: ...  # a migration's statements, inside this transaction


class Database(Protocol):
    backend: str  # "sqlite" | "postgresql"
    where: str  # where the data lives, for messages (never with a password)
    lock_rows: str  # appended to a SELECT that must lock the rows it reads until commit
    # A COMMIT can be lost on its way back (it travels over a network), and new_ids never hands
    # out an id twice, even after a rollback: a lost batch's rows can be looked for by id.
    commit_can_be_lost: bool

    # pipelined: statements whose results nobody reads go out together (PostgreSQL's pipeline
    # mode), so a failure may surface at the next read or at commit rather than at the statement.
    def transaction(self, *, pipelined: bool = False) -> AbstractContextManager[Tx]: ...
    def reading(self) -> AbstractContextManager[Tx]: ...
    def close(self) -> None: ...


@lru_cache(maxsize=64)
def insert_sql(table: str, columns: tuple[str, ...]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"


@lru_cache(maxsize=64)
def update_sql(table: str, columns: tuple[str, ...], keep_if_null: frozenset[str]) -> str:
    assignments = (f"{name} = COALESCE(?, {name})" if name in keep_if_null else f"{name} = ?" for name in columns)
    return f"UPDATE {table} SET {', '.join(assignments)} WHERE id = ?"


def check_unique_ids(rows: Sequence[Sequence]) -> None:
    if len({row[-1] for row in rows}) != len(rows):
        raise ValueError("update_rows: an id repeats, so which update wins would depend on the backend")


def placeholders(values: Sequence) -> str:
    """`(?, ?, ?)` for an IN list; an empty list matches nothing."""
    return "(" + ", ".join("?" for _ in values) + ")" if values else "(NULL)"


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
