"""`keybrake`: dollar caps, endpoint allowlists and an audit trail for vendor API keys."""

import click

from .. import __version__
from ..home import KeybrakeHome
from . import admin, pricing, reconcile, reports, setup, vault


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", "home", envvar="KEYBRAKE_HOME", type=click.Path(file_okay=False),
              help="The Keybrake home (database, master key, CA). Default: $KEYBRAKE_HOME or ~/.keybrake.")
@click.version_option(__version__, prog_name="keybrake")
@click.pass_context
def cli(ctx: click.Context, home: str | None) -> None:
    """Keybrake puts a dollar cap, an endpoint allowlist and an audit trail on the
    Stripe, Twilio and Resend keys your workers use.

    Start with `keybrake proxy` (it initialises the home), store a real secret with
    `keybrake secret set stripe`, then hand workers keys from `keybrake issue`.
    """
    ctx.obj = KeybrakeHome.resolve(home)


for command in (*setup.COMMANDS, *vault.COMMANDS, *reports.COMMANDS, *pricing.COMMANDS, *admin.COMMANDS, *reconcile.COMMANDS):
    cli.add_command(command)
