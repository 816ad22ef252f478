"""`keybrake budget`: dollar caps shared by many keys, nested like an organisation."""

import click

from ..budget_views import BUDGET_COLUMNS, budget_document
from ..text import visible
from ..vault.budgets import NAME_RULE, BudgetError, BudgetRequest, check_name, create_budget
from .context import installation
from .output import emit, print_json
from .params import usd_micros


def _name(_ctx, param, value):
    if value is None:
        return None
    try:
        return check_name(value)
    except BudgetError:
        raise click.BadParameter(f"a budget name is {NAME_RULE}", param=param) from None


@click.group()
def budget() -> None:
    """Budgets: dollar caps that many vault keys spend from together, nested.

    A key issued with `keybrake issue --budget NAME` spends from NAME, from NAME's parent, and
    so on up. Every call is checked against the key's own caps and every one of those budgets'
    caps in the same transaction, so a budget's cap holds exactly however many keys and proxy
    replicas spend from it at once. A call over a budget's cap gets the vendor's 429 with
    `x-keybrake-cap: budget:NAME`.

    \b
      keybrake budget create org --total-usd-cap 1000
      keybrake budget create support --parent org --daily-usd-cap 200
      keybrake issue --vendor stripe --budget support --allow "POST /v1/refunds"
      keybrake budget show support
      keybrake budget freeze org      # every key under org is refused from its next call
      keybrake spend --by budget      # each budget's figures include its children's
    """


@budget.command("create")
@click.argument("name", callback=_name)
@click.option("--daily-usd-cap", callback=usd_micros, help="Most its keys (and children's keys) may spend per UTC day, in USD.")
@click.option("--total-usd-cap", callback=usd_micros, help="Most they may spend over the budget's life, in USD.")
@click.option("--parent", callback=_name, metavar="NAME",
              help="The budget this one spends from: its caps bind this one's keys too. Fixed once created.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def create(ctx: click.Context, name: str, daily_usd_cap, total_usd_cap, parent: str | None, as_json: bool) -> None:
    """Create budget NAME (1-64 letters, digits, '.', '_', '-').

    A budget without caps still groups keys: for `spend --by budget`, and to freeze them all
    at once. Budgets nest up to 8 deep and are never deleted (freeze one to stop it).
    """
    with installation(ctx) as kb:
        try:
            record = create_budget(kb.ledger, BudgetRequest(name, parent, daily_usd_cap, total_usd_cap))
        except BudgetError as error:
            flag = {"daily_usd_cap": "--daily-usd-cap", "total_usd_cap": "--total-usd-cap", "parent": "--parent"}
            raise click.UsageError(f"{flag.get(error.field, 'NAME')}: {error.reason}") from None
    document = budget_document(record)
    if as_json:
        print_json(document)
        return
    caps = [f"{which} cap ${document[field]}" for which, field in (("daily", "daily_usd_cap"),
                                                                   ("total", "total_usd_cap")) if document[field]]
    click.echo(f"created budget {name}{' under ' + parent if parent else ''}; {', '.join(caps) or 'no cap of its own'}. "
               f"Issue keys into it with `keybrake issue --budget {name} ...`.")


@budget.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def list_budgets(ctx: click.Context, as_json: bool) -> None:
    """List budgets with their caps and spend (each includes its children's)."""
    with installation(ctx) as kb:
        records = kb.ledger.list_budgets()
    rows = [budget_document(r) for r in records]
    if as_json:
        print_json(rows)
        return
    emit(rows, BUDGET_COLUMNS, "table")


@budget.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show one budget: caps, spent, reserved, today's figures, what is left, its children
    and the keys that spend from it directly."""
    with installation(ctx) as kb:
        record = kb.ledger.get_budget(name)
        if record is None:
            raise click.ClickException(f"no budget {visible(name)}; `keybrake budget list` shows them")
        document = {**budget_document(record), "ancestors": kb.ledger.budget_lineage(name)[1:],
                    "keys": kb.ledger.budget_keys(name)}
    if as_json:
        print_json(document)
        return
    for field, value in document.items():
        shown = ", ".join(value) if isinstance(value, list) else ("-" if value is None else str(value))
        click.echo(f"{field:>14}: {visible(shown) or '-'}")


def _set_frozen(ctx: click.Context, name: str, frozen: bool, as_json: bool) -> None:
    with installation(ctx) as kb:
        record = kb.ledger.set_budget_frozen(name, frozen)
    if record is None:
        raise click.ClickException(f"no budget {visible(name)}; `keybrake budget list` shows them")
    document = budget_document(record)
    if as_json:
        print_json(document)
    elif frozen:
        click.echo(f"froze budget {name}: every key under it is refused from its next call, like a revoked key. "
                   f"`keybrake budget unfreeze {name}` restores them.")
    elif record.frozen_by is not None:
        click.echo(f"unfroze budget {name}, but its ancestor {record.frozen_by} is frozen: its keys stay refused.")
    else:
        click.echo(f"unfroze budget {name}: its keys are decided as before from their next call.")


@budget.command("freeze")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def freeze(ctx: click.Context, name: str, as_json: bool) -> None:
    """Freeze budget NAME: every key under it (in it, or in any budget below it) is refused
    from its next call, as if revoked. Calls already forwarded still settle. Reversible."""
    _set_frozen(ctx, name, True, as_json)


@budget.command("unfreeze")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def unfreeze(ctx: click.Context, name: str, as_json: bool) -> None:
    """Unfreeze budget NAME: its keys are decided again from their next call (unless an
    ancestor is frozen too)."""
    _set_frozen(ctx, name, False, as_json)


COMMANDS = (budget,)
