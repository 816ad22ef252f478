"""Option callbacks shared by several commands."""

import click

from ..money import InvalidAmount, usd_to_micros


def usd_micros(_ctx, param, value: str | None) -> int | None:
    """A USD amount option ("50", "12.34") as micros; a clear error names the option."""
    if value is None:
        return None
    try:
        return usd_to_micros(value)
    except InvalidAmount as error:
        raise click.BadParameter(str(error), param=param) from None
