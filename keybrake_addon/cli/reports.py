"""Commands that read the audit trail: spend (audit has its own module, audit.py)."""

from datetime import datetime

import click

from ..ledger.base import AuditFilter
from ..views import spend_document
from ..durations import parse_since
from .context import installation
from .output import FORMATS, emit


def _since(_ctx, param, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_since(value)
    except ValueError as failure:
        raise click.BadParameter(str(failure), param=param) from None


since_option = click.option("--since", callback=_since,
                            help="Only calls since an ISO time or a duration ago (2h, 1d).")


@click.command()
@click.option("--label", help="Only keys of this run label.")
@click.option("--label-prefix", metavar="PREFIX",
              help="Only keys whose label starts with PREFIX (taken literally: % and _ are not wildcards).")
@click.option("--by", type=click.Choice(["key", "label", "vendor", "day", "budget"]), default="label",
              show_default=True, help="How to group the totals. By budget, each budget's include its children's.")
@since_option
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="csv for a spreadsheet; json for a program.")
@click.option("--json", "as_json", is_flag=True, help="The same as --format json.")
@click.pass_context
def spend(ctx: click.Context, label, label_prefix, by, since, fmt, as_json) -> None:
    """Print spend totals: settled spend, open reservations, calls, refusals and cap hits.

    `calls` is every request, refused ones included (`allowed` + `refused`); `keybrake keys`
    counts only the allowed ones in its `calls`, as --max-calls does.

    Days pruned by `keybrake audit prune` count from their daily totals; over such a day --since
    counts the whole day.
    """
    with installation(ctx) as kb:
        rows = kb.ledger.spend(by, AuditFilter(label=label, label_prefix=label_prefix, since=since))
    emit([spend_document(row) for row in rows],
         [by, "spent_usd", "reserved_usd", "calls", "allowed", "refused", "cap_hits"], "json" if as_json else fmt)


COMMANDS = (spend,)
