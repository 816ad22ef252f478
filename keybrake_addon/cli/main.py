"""`keybrake`: dollar caps, endpoint allowlists and an audit trail for vendor API keys."""

from importlib import import_module

import click

from .. import __version__
from ..home import KeybrakeHome
from .target import Target

# Each command's module is imported only when that command runs (or --help lists them all):
# `keybrake audit` in a script must not pay for mitmproxy, cryptography and the HTTP client.
COMMAND_MODULES = {
    "init": "setup", "env": "setup", "proxy": "setup", "demo": "setup",
    "secret": "vault", "issue": "vault", "keys": "vault", "revoke": "vault",
    "audit": "audit", "spend": "reports",
    "pricing": "pricing",
    "admin-token": "admin", "worker-token": "admin",
    "reconcile": "reconcile",
    "db": "database",
    "settings": "settings",
    "budget": "budgets",
    "alerts": "alerts",
}


class LazyCommands(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module_name = COMMAND_MODULES.get(name)
        if module_name is None:
            return None
        module = import_module(f"{__package__}.{module_name}")
        return next(command for command in module.COMMANDS if command.name == name)


@click.group(cls=LazyCommands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", "home", envvar="KEYBRAKE_HOME", type=click.Path(file_okay=False),
              help="The Keybrake home (database, master key, CA). Default: $KEYBRAKE_HOME or ~/.keybrake.")
@click.option("--database", "database", envvar="KEYBRAKE_DATABASE_URL", metavar="URL",
              help="The ledger database: postgresql://user@host:port/db for replicas sharing one ledger. "
                   "Default: $KEYBRAKE_DATABASE_URL, else the SQLite file in the home.")
@click.version_option(__version__, prog_name="keybrake")
@click.pass_context
def cli(ctx: click.Context, home: str | None, database: str | None) -> None:
    """Keybrake puts a dollar cap, an endpoint allowlist and an audit trail on the
    Stripe, Twilio and Resend keys your workers use.

    Start with `keybrake proxy` (it initialises the home), store a real secret with
    `keybrake secret set stripe`, then hand workers keys from `keybrake issue`.
    """
    ctx.obj = Target(KeybrakeHome.resolve(home), database)
