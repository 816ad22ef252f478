"""`keybrake admin-token`: tokens for the vault HTTP API."""

import click

from ..api.tokens import AdminTokens
from ..policy import iso
from .context import installation
from .output import emit, print_json


@click.group("admin-token")
def admin_token() -> None:
    """Admin tokens for the vault API (`Authorization: Bearer kba_...`)."""


@admin_token.command("create")
@click.option("--name", help="What the token is for, e.g. trigger-dev-prod.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON with `token` and `token_id`.")
@click.pass_context
def create(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """Create a token and print it once; only its hash is stored."""
    with installation(ctx) as kb:
        token, secret = AdminTokens(kb.ledger).create(name)
    if as_json:
        print_json({"token_id": token.token_id, "name": token.name, "token": secret})
        return
    click.echo(secret)
    click.echo(f"created admin token {token.token_id}; it is shown once.", err=True)


@admin_token.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def list_tokens(ctx: click.Context, as_json: bool) -> None:
    """List tokens (never the tokens themselves)."""
    with installation(ctx) as kb:
        tokens = AdminTokens(kb.ledger).list()
    rows = [{"token_id": t.token_id, "name": t.name, "created_at": iso(t.created_at),
             "revoked_at": iso(t.revoked_at) if t.revoked_at else None} for t in tokens]
    emit(rows, ["token_id", "name", "created_at", "revoked_at"], "json" if as_json else "table")


@admin_token.command("revoke")
@click.argument("token_id")
@click.pass_context
def revoke(ctx: click.Context, token_id: str) -> None:
    """Revoke a token; the API refuses it from the next request on."""
    with installation(ctx) as kb:
        if not AdminTokens(kb.ledger).revoke(token_id):
            raise click.ClickException(f"no admin token {token_id}")
    click.echo(f"revoked {token_id}")


COMMANDS = (admin_token,)
