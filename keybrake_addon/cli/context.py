"""Shared helpers for commands: the home from the global option, an opened installation."""

from contextlib import contextmanager

import click

from ..home import KeybrakeHome
from ..installation import Installation, initialise, open_installation
from ..ledger.base import LedgerUnavailable
from ..vault.crypto import MasterKeyError


def home_of(ctx: click.Context) -> KeybrakeHome:
    return ctx.find_root().obj


@contextmanager
def installation(ctx: click.Context, *, create: bool = False):
    home = home_of(ctx)
    try:
        if create and not home.is_initialised():
            initialise(home)
        opened: Installation = open_installation(home)
    except (FileNotFoundError, MasterKeyError, LedgerUnavailable) as error:
        raise click.ClickException(str(error)) from None
    try:
        yield opened
    except LedgerUnavailable as error:
        raise click.ClickException(str(error)) from None
    finally:
        opened.close()
