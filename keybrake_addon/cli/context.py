"""Shared helpers for commands: the home and database from the global options, an opened installation."""

from contextlib import contextmanager
import click

from ..home import KeybrakeHome
from ..installation import Installation, initialise, open_installation
from ..ledger.base import LedgerUnavailable
from ..ledger.migrations import SchemaMismatch
from ..ledger.opening import database_of
from ..ledger.urls import DatabaseUrl
from ..vault.crypto import MasterKeyError
from .target import Target


def home_of(ctx: click.Context) -> KeybrakeHome:
    return ctx.find_root().obj.home


def database_of_ctx(ctx: click.Context) -> DatabaseUrl:
    target: Target = ctx.find_root().obj
    try:
        return database_of(target.database_url, target.home.database)
    except ValueError as failure:
        raise click.BadParameter(str(failure), param_hint="--database") from None


@contextmanager
def installation(ctx: click.Context, *, create: bool = False):
    home = home_of(ctx)
    database = database_of_ctx(ctx)
    try:
        if create and not home.is_initialised():
            initialise(home, database)
        opened: Installation = open_installation(home, database=database)
    except (FileNotFoundError, MasterKeyError, LedgerUnavailable, SchemaMismatch) as error:
        raise click.ClickException(str(error)) from None
    try:
        yield opened
    except LedgerUnavailable as error:
        raise click.ClickException(str(error)) from None
    finally:
        opened.close()
