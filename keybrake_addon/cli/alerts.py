"""`keybrake alerts`: webhooks (or Slack messages) before a cap is reached, and when things go wrong."""

import click

from ..ledger import alert_store
from ..ledger.alert_events import KINDS
from ..vendors import VENDORS
from .context import installation
from .output import emit, print_json

SUBSCRIPTION_COLUMNS = ["id", "url", "format", "events", "thresholds", "label_prefix", "vendor", "allow_private",
                        "created_at"]
DELIVERY_COLUMNS = ["id", "type", "subscription_id", "key_id", "state", "attempts", "last_status", "last_error",
                    "next_attempt_at", "delivered_at"]


@click.group()
def alerts() -> None:
    """Tell a webhook (or a Slack channel) before a key reaches its cap.

    \b
    Events (all of them unless --events says otherwise):
      key.threshold_crossed     a key's spend + holds reached a threshold (% of its daily
                                or total cap); once per key, cap, threshold and UTC day
      key.cap_hit               the first call a key's own cap refused, per key and day
      key.revoked               a key was revoked
      key.expired               a key expired with money still reserved
      budget.threshold_crossed  the same for a budget: once per budget, cap, threshold, day
      budget.cap_hit            the first call a budget's cap refused, per budget and day
      reservation.unknown       a hold whose outcome nobody will report (5xx, dead proxy)
      ledger.unavailable        the ledger could not be reached, and
      ledger.recovered          when it answered again (both sent after it is back)

    Each event is written to the ledger with the money movement that caused it, and the
    running proxy delivers it: signed the Standard Webhooks way, retried with backoff
    (30 s doubling to 1 h) for 24 hours.
    """


def _csv_option(_ctx, _param, values):
    return [part.strip() for value in values for part in value.split(",") if part.strip()] or None


@alerts.command("add")
@click.argument("url")
@click.option("--events", multiple=True, callback=_csv_option, metavar="E1,E2",
              help=f"Which events to send (default all): {', '.join(KINDS)}.")
@click.option("--thresholds", multiple=True, callback=_csv_option, metavar="50,80,100",
              help="Percents of a cap at which key.threshold_crossed and budget.threshold_crossed fire.  "
                   "[default: 50,80,100]")
@click.option("--label-prefix", metavar="P",
              help="Only keys whose label starts with P (trigger.dev/billing/...). Budget and ledger events are "
                   "not about one key: they still come (leave them out with --events).")
@click.option("--vendor", type=click.Choice(sorted(VENDORS)),
              help="Only keys of this vendor (budget and ledger events still come, as for --label-prefix).")
@click.option("--format", "fmt", type=click.Choice(["standard", "slack"]), default="standard", show_default=True,
              help="standard: Standard Webhooks JSON {type, timestamp, data}; slack: a {\"text\": ...} message "
                   "for a Slack incoming webhook.")
@click.option("--allow-private", is_flag=True,
              help="Allow a receiver on a private, loopback or link-local address (refused otherwise, at every "
                   "delivery: the URL's name is resolved and checked each time).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def alerts_add(ctx: click.Context, url: str, events, thresholds, label_prefix: str | None, vendor: str | None,
               fmt: str, allow_private: bool, as_json: bool) -> None:
    """Subscribe URL to alerts; prints its id and signing secret (shown this once).

    \b
    keybrake alerts add https://hooks.example.com/keybrake --thresholds 80,100
    keybrake alerts add https://hooks.slack.com/services/T/B/X --format slack \\
        --events key.threshold_crossed,key.cap_hit --label-prefix trigger.dev/billing-agent/

    Verify each request on the receiving side with the secret, as `standardwebhooks.Webhook(secret)
    .verify(body, headers)` does, and drop repeats by the webhook-id header.
    """
    from ..alerts.subscriptions import InvalidSubscription, create, document, parse_request

    try:
        request = parse_request(url, events=events, thresholds=thresholds, label_prefix=label_prefix, vendor=vendor,
                                fmt=fmt, allow_private=allow_private)
    except InvalidSubscription as invalid:
        raise click.BadParameter(str(invalid), param_hint=_hint(invalid.field)) from None
    with installation(ctx) as kb:
        subscription, secret = create(kb.ledger, kb.master_key, request)
    shown = {**document(subscription), "signing_secret": secret}
    if as_json:
        print_json(shown)
        return
    click.echo(f"alert subscription {subscription.id} added: {', '.join(subscription.events)}")
    click.echo(f"signing secret (shown once; store it with the receiver): {secret}")
    click.echo(f"send a test event now: keybrake alerts test {subscription.id}")


def _hint(field: str) -> str:
    return "URL" if field == "url" else "--" + field.replace("_", "-")


@alerts.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def alerts_list(ctx: click.Context, as_json: bool) -> None:
    """List active subscriptions (never their secrets; a URL's path past two segments is hidden)."""
    from ..alerts.subscriptions import document

    with installation(ctx) as kb:
        rows = [document(s) for s in alert_store.subscriptions(kb.ledger)]
    if not as_json:
        rows = [{**row, "events": "all" if tuple(row["events"]) == KINDS else ",".join(row["events"]),
                 "thresholds": ",".join(map(str, row["thresholds"]))} for row in rows]
    emit(rows, SUBSCRIPTION_COLUMNS, "json" if as_json else "table")


@alerts.command("remove")
@click.argument("subscription_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def alerts_remove(ctx: click.Context, subscription_id: str, as_json: bool) -> None:
    """Remove a subscription; its deliveries not sent yet are cancelled."""
    with installation(ctx) as kb:
        cancelled = alert_store.remove_subscription(kb.ledger, subscription_id)
    if cancelled is None:
        raise click.ClickException(f"no active alert subscription {subscription_id} (see `keybrake alerts list`)")
    if as_json:
        print_json({"removed": [subscription_id], "cancelled_deliveries": cancelled})
        return
    click.echo(f"removed alert subscription {subscription_id}"
               + (f"; {cancelled} pending deliveries cancelled" if cancelled else ""))


@alerts.command("test")
@click.argument("subscription_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def alerts_test(ctx: click.Context, subscription_id: str, as_json: bool) -> None:
    """Send an `alert.test` event to a subscription now, and say how the receiver answered.

    The test is signed like every event, and not retried. Exits 1 when it was not delivered.
    """
    from ..alerts.deliverer import send_test

    with installation(ctx) as kb:
        try:
            event_id, result = send_test(kb.ledger, kb.master_key, subscription_id)
        except LookupError as missing:
            raise click.ClickException(f"{missing} (see `keybrake alerts list`)") from None
    if as_json:
        print_json({"subscription_id": subscription_id, "event_id": event_id, "delivered": result.delivered,
                    "status": result.status, "error": result.error})
    elif result.delivered:
        click.echo(f"delivered {event_id} to {subscription_id}: HTTP {result.status}")
    if not result.delivered:
        if not as_json:
            click.echo(f"not delivered: {result.error}", err=True)
        ctx.exit(1)


@alerts.group("deliveries", invoke_without_command=True)
@click.option("--failed", is_flag=True, help="Only deliveries that failed at least once and were not delivered "
                                              "(still retrying, or given up after 24 h).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def deliveries(ctx: click.Context, failed: bool, as_json: bool) -> None:
    """List alert deliveries, newest first (200 at most); `deliveries retry ID` sends one now.

    States: pending (waiting for its next attempt), delivered, failed (gave up after 24 h of
    retries), cancelled (its subscription was removed).
    """
    if ctx.invoked_subcommand is not None:
        return
    from ..alerts.subscriptions import delivery_document

    with installation(ctx) as kb:
        rows = [delivery_document(r) for r in alert_store.deliveries(kb.ledger, failed=failed)]
    emit(rows, DELIVERY_COLUMNS, "json" if as_json else "table")


@deliveries.command("retry")
@click.argument("delivery_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def deliveries_retry(ctx: click.Context, delivery_id: str, as_json: bool) -> None:
    """Send one delivery now (a failed one gets another 24 h of automatic retries if it fails)."""
    from ..alerts.deliverer import retry_by_hand
    from ..alerts.subscriptions import delivery_document

    with installation(ctx) as kb:
        try:
            recorded = retry_by_hand(kb.ledger, kb.master_key, delivery_id)
        except LookupError as missing:
            raise click.ClickException(f"{missing} (see `keybrake alerts deliveries`)") from None
        except ValueError as refused:
            raise click.ClickException(str(refused)) from None
    if recorded is None:
        raise click.ClickException(f"delivery {delivery_id} was cancelled: its subscription was removed")
    shown = delivery_document(recorded)
    if as_json:
        print_json(shown)
    elif shown["state"] == "delivered":
        click.echo(f"delivered {delivery_id}: HTTP {shown['last_status']}")
    else:
        click.echo(f"not delivered: {shown['last_error']}; next automatic attempt at {shown['next_attempt_at']}",
                   err=True)
    if shown["state"] != "delivered":
        ctx.exit(1)


COMMANDS = [alerts]
