"""Commands for the vault: secret, issue, keys, revoke."""

import sys

import click

from ..ledger.base import KeyRecord
from ..ledger.times import utc_now
from ..money import format_usd
from ..policy import iso
from ..vault.issuance import IssueError, KeyRequest, issue_key
from ..vault.secrets import UnacceptableSecret, check_secret
from ..vendors import VENDORS
from .context import installation
from ..ledger.housekeeping import reap_dead_local_runs
from ..views import key_document
from ..text import has_control_characters, visible
from .output import emit, print_json, table
from .params import usd_micros

VENDOR_CHOICE = click.Choice(sorted(VENDORS))


@click.group()
def secret() -> None:
    """Store, list and delete real vendor secrets (encrypted with AES-256-GCM under the master key)."""


@secret.command("set")
@click.argument("vendor", type=VENDOR_CHOICE)
@click.option("--name", default="default", show_default=True, help="Name of this secret, for several accounts.")
@click.option("--account-sid", help="Twilio: the Account SID (AC...) the secret belongs to. Required.")
@click.option("--api-key-sid", help="Twilio: the API key SID (SK...) when the secret is an API key secret "
                                    "rather than the account's auth token.")
@click.pass_context
def secret_set(ctx: click.Context, vendor: str, name: str, account_sid: str | None, api_key_sid: str | None) -> None:
    """Store (or rotate) VENDOR's real secret, read from stdin (at a terminal, without echo).

    The secret is never taken from the command line, where shell history and `ps` would
    see it. Rotating keeps every vault key that uses this secret working. Refused: an empty
    value, a Keybrake vault key, a publishable key (pk_...). Warns when a Stripe secret
    replaces one of the other mode (test / live).
    """
    if has_control_characters(name):
        raise click.BadParameter("must not contain control characters", param_hint="--name")
    if vendor == "twilio" and not (account_sid or "").startswith("AC"):
        raise click.UsageError("a Twilio secret needs --account-sid AC... (requests must name that account)")
    if vendor != "twilio" and (account_sid or api_key_sid):
        raise click.UsageError("--account-sid and --api-key-sid are for Twilio secrets")
    if api_key_sid is not None and not api_key_sid.startswith("SK"):
        raise click.UsageError("--api-key-sid takes an API key SID (SK...)")
    value = _read_secret(vendor)
    try:
        check_secret(vendor, value)
    except UnacceptableSecret as refusal:
        raise click.ClickException(f"not stored: {refusal}") from None
    with installation(ctx) as kb:
        if (change := kb.vault.mode_change(vendor, name, value)) is not None:
            click.echo(f"warning: this {change[1]}-mode secret replaces a {change[0]}-mode one; every vault key "
                       f"of {vendor} secret {name!r} now makes {change[1]}-mode calls", err=True)
        info = kb.vault.put(vendor, name, value, account_sid, api_key_sid)
    click.echo(f"stored {vendor} secret {name!r} (fingerprint {info.fingerprint})")


def _read_secret(vendor: str) -> str:
    """The secret from a terminal without echo, or the first line of a pipe."""
    if sys.stdin.isatty():
        # Echoed, the secret would stay on screen and in terminal scrollback and recordings.
        return click.prompt(f"Paste the {vendor} secret (not shown) and press Enter", hide_input=True,
                            err=True, default="", show_default=False).strip()
    value = sys.stdin.readline().strip()
    if not value:
        raise click.ClickException("not stored: no secret on stdin")
    return value


@secret.command("delete")
@click.argument("vendor", type=VENDOR_CHOICE)
@click.option("--name", default="default", show_default=True, help="Which of VENDOR's secrets.")
@click.option("--force", is_flag=True,
              help="Delete even though active vault keys use it (they are refused from then on).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def secret_delete(ctx: click.Context, vendor: str, name: str, force: bool, as_json: bool) -> None:
    """Delete VENDOR's stored secret.

    Refused while active (neither revoked nor expired) vault keys still use it, listing them;
    revoke them first, or give --force to cut them off.
    """
    with installation(ctx) as kb:
        deleted, users = kb.vault.delete(vendor, name, force=force)
    used_by = [{"key_id": k.key_id, "label": k.spec.label} for k in users]
    if not deleted and users:
        listing = "\n".join(f"  {k.key_id}  {visible(k.spec.label or '-')}" for k in users)
        raise click.ClickException(f"not deleted: {len(users)} active vault key(s) use {vendor} secret {name!r}:\n"
                                   f"{listing}\nrevoke them (`keybrake revoke KEY_ID`) or give --force")
    if not deleted:
        raise click.ClickException(f"no {vendor} secret named {name!r}")
    if as_json:
        print_json({"deleted": {"vendor": vendor, "name": name}, "cut_off_keys": used_by})
        return
    click.echo(f"deleted {vendor} secret {name!r}"
               + (f"; {len(users)} active key(s) now refused: {', '.join(k.key_id for k in users)}" if users else ""))


@secret.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def secret_list(ctx: click.Context, as_json: bool) -> None:
    """List stored secrets: vendor, name, fingerprint and dates. Never the secret itself."""
    with installation(ctx) as kb:
        rows = [{"vendor": s.vendor, "name": s.name, "fingerprint": s.fingerprint, "account_sid": s.account_sid,
                 "api_key_sid": s.auth_user, "created_at": iso(s.created_at), "updated_at": iso(s.updated_at)}
                for s in kb.vault.list()]
    emit(rows, ["vendor", "name", "fingerprint", "account_sid", "api_key_sid", "created_at", "updated_at"],
         "json" if as_json else "table")


@click.command()
@click.option("--vendor", required=True, type=VENDOR_CHOICE, help="The vendor this key is for.")
@click.option("--secret", "secret_name", default="default", show_default=True, help="Which stored secret it stands for.")
@click.option("--daily-usd-cap", callback=usd_micros, help="Most it may spend per UTC day, in USD.")
@click.option("--total-usd-cap", callback=usd_micros, help="Most it may spend over its life, in USD.")
@click.option("--max-calls", type=click.IntRange(0, 10**12), help="Most calls it may make.")
@click.option("--allow", "allowlist", multiple=True, metavar='"METHOD /path"',
              help='An endpoint it may call; `*` is one path segment, `**` the rest. Repeatable.')
@click.option("--allow-all", is_flag=True, help="Allow every endpoint (no allowlist).")
@click.option("--no-cap", is_flag=True, help="Allow a key with no dollar cap.")
@click.option("--allow-unpriced", is_flag=True, help="Forward calls Keybrake cannot price, counting them from the response.")
@click.option("--expires-in", help="Lifetime: 90s, 90m, 2h, 1d. Default: the installation's default-key-ttl (24h "
                                   "unless changed); at most its max-key-ttl (30d unless raised). "
                                   "See `keybrake settings`.")
@click.option("--label", help="Run label for audit and spend, e.g. trigger.dev/billing-agent/run_123.")
@click.option("--budget", metavar="NAME", help="Spend from this budget (`keybrake budget create`): its caps and its "
                                               "ancestors' apply on top of the key's own. A capped budget "
                                               "stands in for the key's own cap.")
@click.option("--stripe-account", metavar="acct_...",
              help="Stripe Connect: every call acts for this connected account and must send it as "
                   "Stripe-Account (a call without it, or with another, is refused). Without it, any "
                   "Stripe-Account is refused.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (key_id, vault_key, vendor, label, expires_at, ...).")
@click.pass_context
def issue(ctx: click.Context, vendor, secret_name, daily_usd_cap, total_usd_cap, max_calls, allowlist, allow_all,
          no_cap, allow_unpriced, expires_in, label, budget, stripe_account, as_json) -> None:
    """Issue a vault key: a capped, scoped stand-in for a real secret. Shown once.

    Every key expires: after --expires-in, else after the installation's default TTL (24h
    unless `keybrake settings set default-key-ttl` changed it).
    """
    request = KeyRequest(vendor=vendor, secret_name=secret_name, label=label, daily_cap_micros=daily_usd_cap,
                         total_cap_micros=total_usd_cap, max_calls=max_calls, allowlist=tuple(allowlist),
                         allow_all=allow_all, no_cap=no_cap, allow_unpriced=allow_unpriced, expires_in=expires_in,
                         budget=budget, stripe_account=stripe_account)
    with installation(ctx) as kb:
        try:
            issued = issue_key(kb.ledger, kb.master_key, request)
        except IssueError as error:
            raise click.UsageError(_naming_the_flag(error)) from None
    if as_json:
        print_json({"vault_key": issued.vault_key, **key_document(issued.record)})
        return
    click.echo(issued.vault_key)
    click.echo(f"issued {issued.key_id} for {vendor}{' label ' + label if label else ''}"
               f"{' in budget ' + budget if budget else ''}; "
               f"{describe_limits(issued.record)}. The key is shown once: Keybrake keeps only its hash.", err=True)


@click.group()
def keys() -> None:
    """List and inspect vault keys."""


KEY_COLUMNS = ["key_id", "vendor", "label", "status", "spent_usd", "reserved_usd", "remaining_usd", "calls", "expires_at",
               "stripe_account"]


@keys.command("list")
@click.option("--label", help="Only keys with this run label.")
@click.option("--active", is_flag=True, help="Only keys that are neither revoked nor expired.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def keys_list(ctx: click.Context, label: str | None, active: bool, as_json: bool) -> None:
    """List vault keys with their spend.

    `calls` counts the calls the key let through (what --max-calls caps); `keybrake spend` counts
    every request in `calls`, refused ones too, and the let-through ones in `allowed`.
    """
    with installation(ctx) as kb:
        reap_dead_local_runs(kb.ledger)
        records = kb.ledger.list_keys(label=label, active_at=utc_now() if active else None)
    emit([key_document(r) for r in records], KEY_COLUMNS, "json" if as_json else "table")


@keys.command("show")
@click.argument("key_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def keys_show(ctx: click.Context, key_id: str, as_json: bool) -> None:
    """Show one key: settings, spent, reserved (and of that, unknown) and remaining."""
    with installation(ctx) as kb:
        reap_dead_local_runs(kb.ledger)  # holds of a proxy killed on this host show as unknown at once
        record = kb.ledger.get_key(key_id)
        if record is None:
            raise click.ClickException(f"no vault key {key_id}")
        open_holds = kb.ledger.open_reservations(key_id)
    document = key_document(record)
    document["open_reservations"] = [
        {"id": r["id"], "state": r["state"], "reserved_usd": format_usd(r["reserved_micros"]),
         "idempotency_key": r["idempotency_key"], "created_at": r["created_at"]} for r in open_holds]
    if as_json:
        print_json(document)
        return
    for name, value in document.items():
        if name != "open_reservations":
            shown = ', '.join(value) if isinstance(value, list) else ('-' if value is None else str(value))
            click.echo(f"{name:>18}: {visible(shown)}")
    if open_holds:
        click.echo("\nopen reservations (counted until settled; 'unknown' means the vendor may have charged):")
        click.echo(table(document["open_reservations"], ["id", "state", "reserved_usd", "idempotency_key", "created_at"]))


@click.command()
@click.argument("key_id", required=False)
@click.option("--label", help="Revoke every key with this run label.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def revoke(ctx: click.Context, key_id: str | None, label: str | None, as_json: bool) -> None:
    """Revoke KEY_ID, or every key of --label. Takes effect on the very next request.

    Revoking a revoked key again changes nothing and says so. A KEY_ID or a --label that names no
    key is an error (exit 1): a typo must not pass for a revocation.
    """
    if bool(key_id) == bool(label):
        raise click.UsageError("give either KEY_ID or --label")
    with installation(ctx) as kb:
        if key_id:
            before = kb.ledger.get_key(key_id)
            if before is None or not kb.ledger.revoke_key(key_id):
                raise click.ClickException(f"no vault key {key_id}")
            already = [key_id] if before.revoked_at is not None else []
            revoked = [key_id]
        else:
            already = [k.key_id for k in kb.ledger.list_keys(label=label) if k.revoked_at is not None]
            revoked = kb.ledger.revoke_label(label)
            if not revoked:
                raise click.ClickException(f"no keys with label {label!r} (labels are exact; `keybrake keys` lists them)")
    if as_json:
        print_json({"revoked": revoked, "already_revoked": already})
        return
    newly = [k for k in revoked if k not in already]
    if newly:
        click.echo(f"revoked {len(newly)} key(s): {', '.join(newly)}")
    if already:
        click.echo(f"already revoked before, unchanged: {', '.join(already)}")


# The option of `keybrake issue` each issuance field comes from, so an error names what to change.
ISSUE_FLAGS = {"expires_in": "--expires-in", "daily_usd_cap": "--daily-usd-cap", "total_usd_cap": "--total-usd-cap",
               "max_calls": "--max-calls", "no_cap": "--no-cap", "allowed_endpoints": "--allow",
               "label": "--label", "secret": "--secret", "vendor": "--vendor", "budget": "--budget",
               "stripe_account": "--stripe-account"}


def _naming_the_flag(error: IssueError) -> str:
    flag = ISSUE_FLAGS.get(error.field)
    return f"{flag}: {error.reason}" if flag else str(error)


def describe_limits(record: KeyRecord) -> str:
    spec = record.spec
    parts = []
    if spec.daily_cap_micros is not None:
        parts.append(f"daily cap ${format_usd(spec.daily_cap_micros)}")
    if spec.total_cap_micros is not None:
        parts.append(f"total cap ${format_usd(spec.total_cap_micros)}")
    if spec.max_calls is not None:
        parts.append(f"max {spec.max_calls} calls")
    parts.append("any endpoint" if spec.allow_all else f"{len(spec.allowlist)} allowed endpoint(s)")
    if spec.stripe_account:
        parts.append(f"for connected account {spec.stripe_account}")
    if spec.expires_at:
        parts.append(f"expires {iso(spec.expires_at)}")
    return ", ".join(parts)


COMMANDS = (secret, issue, keys, revoke)
