"""`keybrake settings`: the installation's settings, kept in the ledger (every replica sees the same)."""

import click

from ..vault.key_lifetimes import SETTINGS, InvalidSetting, KeyLifetimes, read_lifetimes, set_lifetime
from .context import installation
from .output import print_json


@click.group()
def settings() -> None:
    """Show and change installation settings: how long vault keys live.

    \b
    default-key-ttl  lifetime of a key issued without --expires-in (factory: 24h)
    max-key-ttl      longest lifetime a key may be issued with (factory: 30d)
    """


@settings.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def settings_show(ctx: click.Context, as_json: bool) -> None:
    """Show every setting and whether it is the factory value."""
    with installation(ctx) as kb:
        try:
            lifetimes = read_lifetimes(kb.ledger)
        except InvalidSetting as failure:
            raise click.ClickException(str(failure)) from None
    _show(lifetimes, as_json)


@settings.command("set")
@click.argument("name", type=click.Choice(sorted(SETTINGS)))
@click.argument("value")
@click.option("--json", "as_json", is_flag=True, help="Print the settings as JSON afterwards.")
@click.pass_context
def settings_set(ctx: click.Context, name: str, value: str, as_json: bool) -> None:
    """Set NAME to VALUE, a duration like 12h or 60d.

    The default may not be longer than the maximum. Keys issued before keep their expiry.
    """
    with installation(ctx) as kb:
        try:
            lifetimes = set_lifetime(kb.ledger, name, value)
        except InvalidSetting as failure:
            raise click.UsageError(str(failure)) from None
    _show(lifetimes, as_json)


def _show(lifetimes: KeyLifetimes, as_json: bool) -> None:
    rows = {"default-key-ttl": (lifetimes.default_ttl, lifetimes.default_is_set),
            "max-key-ttl": (lifetimes.max_ttl, lifetimes.max_is_set)}
    if as_json:
        print_json({name: {"value": value, "source": "set" if is_set else "factory"}
                    for name, (value, is_set) in rows.items()})
        return
    for name, (value, is_set) in rows.items():
        click.echo(f"{name:>15}: {value}{'' if is_set else '  (factory default)'}")


COMMANDS = (settings,)
