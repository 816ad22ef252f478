"""`keybrake db`: the ledger's schema (status, upgrade) and moving a home's ledger elsewhere."""

import click

from ..ledger import migrations
from ..ledger.base import LedgerUnavailable
from ..ledger.copying import CopyRefused, copy_ledger
from ..ledger.migrations import SchemaMismatch
from ..ledger.opening import schema_version, upgrade
from ..ledger.urls import parse_database_url
from .context import database_of_ctx
from .output import emit, print_json


@click.group("db")
def db() -> None:
    """The ledger database: its schema version, upgrades, and copying it to PostgreSQL."""


@db.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show the schema version and every migration, applied or pending.

    Exits 1 when migrations are pending (a proxy refuses to start until `keybrake db upgrade`).
    """
    database = database_of_ctx(ctx)
    try:
        current = schema_version(database)
    except (LedgerUnavailable, SchemaMismatch) as error:
        raise click.ClickException(str(error)) from None
    rows = [{"version": m.version, "state": "applied" if current is not None and m.version <= current else "pending",
             "description": m.description} for m in migrations.MIGRATIONS]
    if as_json:
        print_json({"database": database.redacted(), "backend": database.backend, "version": current,
                    "latest": migrations.LATEST, "migrations": rows})
    else:
        click.echo(f"database  {database.redacted()} ({database.backend})")
        click.echo(f"schema    {current if current is not None else 'none (empty database)'}; "
                   f"this Keybrake reads {migrations.LATEST}")
        emit(rows, ["version", "state", "description"], "table")
    if current != migrations.LATEST:
        ctx.exit(1)


@db.command("upgrade")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def upgrade_command(ctx: click.Context, as_json: bool) -> None:
    """Apply the migrations the database lacks, in one transaction. Safe to run again.

    Back up first (a copy of keybrake.db while no proxy runs, or pg_dump). Every replica of a
    fleet must run a release that reads the new version.
    """
    database = database_of_ctx(ctx)
    try:
        applied = upgrade(database)
    except (LedgerUnavailable, SchemaMismatch) as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        print_json({"database": database.redacted(), "applied": [m.version for m in applied],
                    "version": migrations.LATEST})
    elif applied:
        for migration in applied:
            click.echo(f"applied {migration.version}: {migration.description}")
        click.echo(f"{database.redacted()} is at schema version {migrations.LATEST}")
    else:
        click.echo(f"{database.redacted()} is already at schema version {migrations.LATEST}; nothing to do")


@db.command("copy")
@click.option("--to", "to", required=True, metavar="URL",
              help="The new, empty PostgreSQL database: postgresql://user@host:port/db.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def copy_command(ctx: click.Context, to: str, as_json: bool) -> None:
    """Copy the whole ledger (the home's SQLite file, or --database) into an empty PostgreSQL database.

    One transaction on the target: it gets everything or nothing. Stop the proxies first; what
    they write after the copy starts stays behind. Then point every replica at it with
    --database (or KEYBRAKE_DATABASE_URL), with a copy of this home's master.key.
    """
    source = database_of_ctx(ctx)
    try:
        target = parse_database_url(to)
    except ValueError as failure:
        raise click.BadParameter(str(failure), param_hint="--to") from None
    try:
        copied = copy_ledger(source, target)
    except (CopyRefused, LedgerUnavailable) as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        print_json({"from": source.redacted(), "to": target.redacted(), "rows": copied})
        return
    emit([{"table": table, "rows": count} for table, count in copied.items()], ["table", "rows"], "table")
    click.echo(f"copied {sum(copied.values())} rows from {source.redacted()} to {target.redacted()}")


COMMANDS = (db,)
