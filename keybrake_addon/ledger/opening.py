"""Opening the ledger a URL names: the SQLite file in the home, or a PostgreSQL database.

The drivers are imported here only, on demand, so a command on SQLite never loads psycopg.
"""

from pathlib import Path

from . import migrations
from .store import SqlLedger
from .urls import DatabaseUrl, parse_database_url

DATABASE_ENV = "KEYBRAKE_DATABASE_URL"


def database_of(url: str | None, home_database: Path) -> DatabaseUrl:
    """The database a command uses: the URL given, else the SQLite file in the home."""
    if url:
        return parse_database_url(url)
    return DatabaseUrl(backend="sqlite", path=home_database)


def open_ledger(database: DatabaseUrl, *, busy_timeout_s: float | None = None, background_checkpoints: bool = False,
                create: bool = True, check: bool = True) -> SqlLedger:
    """Raises LedgerUnavailable when the database cannot be reached, SchemaMismatch when its
    schema needs `keybrake db upgrade` (or is newer than this release)."""
    if database.backend == "sqlite":
        from .sqlite import BUSY_TIMEOUT_S, SqliteLedger

        return SqliteLedger(database.path, busy_timeout_s=BUSY_TIMEOUT_S if busy_timeout_s is None else busy_timeout_s,
                            background_checkpoints=background_checkpoints, create=create, check=check)
    from .postgres import PostgresLedger

    return PostgresLedger(database.conninfo, where=database.redacted(), create=create, check=check)


def upgrade(database: DatabaseUrl) -> list:
    """Apply the migrations the database lacks; returns them (empty: it was current)."""
    ledger = open_ledger(database, create=False, check=False)
    try:
        return migrations.upgrade(ledger.database)
    finally:
        ledger.close()


def schema_version(database: DatabaseUrl) -> int | None:
    ledger = open_ledger(database, create=False, check=False)
    try:
        with ledger.database.reading() as tx:
            return migrations.schema_version(tx)
    finally:
        ledger.close()
