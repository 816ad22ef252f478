"""`keybrake admin-token` (the vault HTTP API) and `keybrake worker-token` (the forward proxy)."""

import click

from ..api.tokens import AdminTokens, WorkerTokens
from ..policy import iso
from ..vault.scopes import describe_scope, scope_document
from .admin_scopes import CEILINGS_HELP, ceiling_options, default_ttl_warning, scope_from_options
from .context import installation
from .output import emit, print_json


def token_group(name: str, kind: type, what: str, use: str, revoked_means: str, scoped: bool = False) -> click.Group:
    """The create/list/revoke commands of one kind of token; `what` names it in messages.

    `scoped`: the tokens carry ceilings on what they mint (admin tokens, see admin_scopes.py).
    """

    @click.group(name, help=f"{what.capitalize()}s {use}.")
    def group() -> None:
        pass

    @click.pass_context
    def create(ctx: click.Context, name: str | None, as_json: bool, **ceilings) -> None:
        scope = scope_from_options(**ceilings) if scoped else None
        with installation(ctx) as kb:
            if scope is not None and scope.budget is not None and kb.ledger.get_budget(scope.budget) is None:
                raise click.UsageError(f"--budget: no budget named {scope.budget!r}; create it with "
                                       f"`keybrake budget create {scope.budget}`")
            tokens = kind(kb.ledger)
            token, secret = tokens.create(name, scope) if scoped else tokens.create(name)
            warning = default_ttl_warning(kb.ledger, scope)
        if warning:
            click.echo(warning, err=True)
        if as_json:
            print_json({"token_id": token.token_id, "name": token.name, "token": secret,
                        **({"scope": scope_document(scope)} if scoped else {})})
            return
        click.echo(secret)
        click.echo(f"created {what} {token.token_id}"
                   + (f" ({describe_scope(scope)})" if scoped else "") + "; it is shown once.", err=True)

    # The options in the order --help shows them: --name, the ceilings, --json.
    command = click.option("--json", "as_json", is_flag=True, help="Print JSON with `token` and `token_id`.")(create)
    command = ceiling_options(command) if scoped else command
    command = click.option("--name", help="What the token is for, e.g. trigger-dev-prod.")(command)
    create_help = "Create a token and print it once; only its hash is stored."
    group.command("create", help=create_help + ("\n\n" + CEILINGS_HELP if scoped else ""))(command)

    @group.command("list")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_context
    def list_tokens(ctx: click.Context, as_json: bool) -> None:
        """List tokens (never the tokens themselves)."""
        with installation(ctx) as kb:
            tokens = kind(kb.ledger).list()
        rows = [{"token_id": t.token_id, "name": t.name, "created_at": iso(t.created_at),
                 "revoked_at": iso(t.revoked_at) if t.revoked_at else None} for t in tokens]
        columns = ["token_id", "name", "created_at", "revoked_at"]
        if scoped:
            for row, t in zip(rows, tokens):
                row.update({"unrestricted": t.scope is None, "scope": scope_document(t.scope),
                            "scope_problem": t.scope_problem,
                            "ceilings": (f"unreadable: {t.scope_problem}" if t.scope_problem
                                         else describe_scope(t.scope))})
            columns += ["unrestricted", "scope", "scope_problem"] if as_json else ["ceilings"]
        emit(rows, columns, "json" if as_json else "table")

    @group.command("revoke", help=f"Revoke a token; {revoked_means}.")
    @click.argument("token_id")
    @click.pass_context
    def revoke(ctx: click.Context, token_id: str) -> None:
        with installation(ctx) as kb:
            if not kind(kb.ledger).revoke(token_id):
                raise click.ClickException(f"no {what} {token_id}")
        click.echo(f"revoked {token_id}")

    return group


admin_token = token_group("admin-token", AdminTokens, "admin token",
                          "for the vault API (`Authorization: Bearer kba_...`)",
                          "the API refuses it from the next request on", scoped=True)
worker_token = token_group("worker-token", WorkerTokens, "worker token",
                           "for the forward proxy (the password in `HTTPS_PROXY=http://worker:kbw_...@host:port`)",
                           "the proxy refuses it within a few seconds (its answers are cached that long)")

COMMANDS = (admin_token, worker_token)
