"""`keybrake pricing`: show, set and check the pricing file of the home."""

import json

import click

from ..pricing import PricingError, load_pricing, pricing_from_document
from .context import home_of
from .output import emit, print_json


@click.group()
def pricing() -> None:
    """Rates Keybrake cannot learn from a request: currencies, Twilio, Resend.

    They live in pricing.json in the Keybrake home; anything it does not set keeps the
    shipped default. A running proxy reads the file when it starts.
    """


def _flatten(document: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for name, value in document.items():
        path = f"{prefix}{name}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def _file_document(path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise click.ClickException(f"{path}: not valid JSON at line {error.lineno}: {error.msg}") from None


@pricing.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print the effective pricing as JSON.")
@click.pass_context
def pricing_show(ctx: click.Context, as_json: bool) -> None:
    """Print every effective rate and whether it comes from the file or the defaults."""
    path = home_of(ctx).pricing_file
    try:
        effective = load_pricing(path).to_document()
    except PricingError as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        print_json(effective)
        return
    from_file = _flatten(_file_document(path))
    rows = [{"field": name, "value": value, "source": "file" if name in from_file else "default"}
            for name, value in _flatten(effective).items()]
    emit(rows, ["field", "value", "source"], "table")
    click.echo(f"\n(file: {path}{'' if path.exists() else ', not created yet'})")


@pricing.command("set")
@click.argument("field")
@click.argument("value")
@click.pass_context
def pricing_set(ctx: click.Context, field: str, value: str) -> None:
    """Set FIELD (a dotted path) to VALUE, checking the whole file before writing it.

    \b
    Examples:
      keybrake pricing set currency_usd_rates.EUR 1.18
      keybrake pricing set twilio.sms_usd_per_segment.44 0.0524
      keybrake pricing set twilio.default_sms_usd_per_segment 0.05
      keybrake pricing set twilio.max_call_minutes 30
      keybrake pricing set resend.usd_per_email 0.0009
    Use the value `null` to remove a setting and fall back to the default.
    """
    path = home_of(ctx).pricing_file
    document = _file_document(path)
    *parents, leaf = field.split(".")
    node = document
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise click.ClickException(f"{field}: {part} is not an object in {path}")
    parsed = json.loads(value) if value in ("null", "true", "false") or value.lstrip("-").isdigit() else value
    if parsed is None:
        node.pop(leaf, None)
    else:
        node[leaf] = parsed
    try:
        pricing_from_document(document)
    except PricingError as error:
        raise click.ClickException(f"not saved: {error}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    click.echo(f"{field} = {value} (saved to {path}; restart running proxies to apply)")


@pricing.command("check")
@click.pass_context
def pricing_check(ctx: click.Context) -> None:
    """Validate the pricing file; exits 1 naming the bad field."""
    path = home_of(ctx).pricing_file
    try:
        load_pricing(path)
    except PricingError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{path}: ok" if path.exists() else f"{path} does not exist: the defaults apply")


COMMANDS = (pricing,)
