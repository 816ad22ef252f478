"""The ceilings of `keybrake admin-token create`: what a scoped admin token may mint."""

from collections.abc import Callable

import click

from ..vault.scopes import InvalidScope, Scope, make_scope
from ..vendors import VENDORS
from .params import usd_micros

CEILINGS_HELP = """\
Without ceiling flags the token is unrestricted: it mints any key and sees every key. With any
of --vendor, --secret, --allow, --max-*, it is scoped: it mints only keys inside those ceilings
(the API answers 403 naming the field otherwise), never an uncapped, allow-all or
allow-unpriced key unless the matching --may-mint-* flag says so, and it sees, lists, revokes
and replays only the keys it minted itself. A scope cannot be changed: create another token
and revoke this one.
"""


_OPTIONS = (
    click.option("--vendor", "vendors", multiple=True, type=click.Choice(sorted(VENDORS)),
                 help="A vendor its keys may be for. Repeatable. Default: any."),
    click.option("--secret", help="The one stored secret name its keys may use. Default: any."),
    click.option("--budget", metavar="NAME",
                 help="The budget its keys must spend from: NAME or a budget under it (`keybrake budget create`). "
                      "A key without its own USD cap counts as capped when a budget above it has one. Default: any."),
    click.option("--allow", "allow", multiple=True, metavar='"METHOD /path"',
                 help="An endpoint pattern its keys' allowlists must lie inside: each key entry inside one of "
                      "these (`POST /v1/refunds` is inside `POST /v1/**` and `* /v1/refunds`; `* /x` only inside "
                      "a `*` method, `/x/**` only inside a `**`). Repeatable. Default: any allowlist."),
    click.option("--max-daily-usd-cap", callback=usd_micros, metavar="X",
                 help="The most its keys may spend per UTC day: each key's daily cap (or, without one, its total "
                      "cap) at most X."),
    click.option("--max-total-usd-cap", callback=usd_micros, metavar="X",
                 help="Each key needs a total USD cap of at most X."),
    click.option("--max-calls", type=click.IntRange(0, 10**12), metavar="N",
                 help="Each key needs max_calls of at most N."),
    click.option("--max-ttl", metavar="DURATION",
                 help="Each key lives at most this long (90m, 2h, 7d). A key asked without expires_in gets the "
                      "installation's default TTL, which must fit too."),
    click.option("--may-mint-uncapped", is_flag=True,
                 help="Let it mint keys without any USD cap (off by default for a scoped token)."),
    click.option("--may-mint-allow-all", is_flag=True,
                 help="Let it mint allow-all keys, with no allowlist (off by default for a scoped token)."),
    click.option("--may-mint-unpriced", is_flag=True,
                 help="Let it mint allow_unpriced keys, which forward calls Keybrake cannot price and count "
                      "them only afterwards, past any cap (off by default for a scoped token)."),
)

_FLAGS = {"vendor": "--vendor", "secret": "--secret", "allow": "--allow", "max_ttl": "--max-ttl",
          "max_daily_usd_cap": "--max-daily-usd-cap", "max_total_usd_cap": "--max-total-usd-cap",
          "max_calls": "--max-calls", "may_mint_uncapped": "--may-mint-uncapped",
          "may_mint_allow_all": "--may-mint-allow-all", "may_mint": "--may-mint-*", "budget": "--budget"}


def ceiling_options(command: Callable) -> Callable:
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def scope_from_options(*, vendors, secret, allow, max_daily_usd_cap, max_total_usd_cap, max_calls, max_ttl,
                       may_mint_uncapped, may_mint_allow_all, may_mint_unpriced, budget=None) -> Scope | None:
    try:
        return make_scope(vendors=vendors, secret=secret, allow=allow, max_daily_cap_micros=max_daily_usd_cap,
                          max_total_cap_micros=max_total_usd_cap, max_calls=max_calls, max_ttl=max_ttl,
                          may_mint_uncapped=may_mint_uncapped, may_mint_allow_all=may_mint_allow_all,
                          may_mint_unpriced=may_mint_unpriced, budget=budget)
    except InvalidScope as failure:
        raise click.UsageError(f"{_FLAGS.get(failure.field, failure.field)}: {failure.reason}") from None


def default_ttl_warning(ledger, scope: Scope | None) -> str | None:
    """A warning when the installation's default TTL is longer than the token's --max-ttl."""
    if scope is None or scope.max_ttl is None:
        return None
    from ..durations import parse_duration
    from ..vault.key_lifetimes import InvalidSetting, read_lifetimes

    try:
        default = read_lifetimes(ledger).default_ttl
    except InvalidSetting:
        return None
    if parse_duration(default) <= parse_duration(scope.max_ttl):
        return None
    return (f"warning: the installation's default key TTL ({default}) is longer than --max-ttl {scope.max_ttl}: "
            f"this token's keys must ask for expires_in <= {scope.max_ttl}, or they are refused")
