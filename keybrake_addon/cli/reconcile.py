"""`keybrake reconcile`: final prices from Twilio, and settling unknown reservations by hand."""

import click

from ..ledger.corrections import NotCorrectable, resolve_by_hand
from ..money import InvalidAmount, format_usd, usd_to_micros
from ..reconcile import TWILIO_BASE_URL, reconcile_twilio
from .context import installation
from .output import emit


@click.command()
@click.option("--label", help="Only keys of this run label.")
@click.option("--key", "key_id", help="Only this key.")
@click.option("--upstream", "upstreams", multiple=True, metavar="twilio=URL",
              help="Fetch from another Twilio base URL (tests, staging).")
@click.option("--dry-run", is_flag=True, help="Fetch and show the corrections without applying them.")
@click.option("--reservation", type=int, help="Settle this open (pending or unknown) reservation by hand...")
@click.option("--actual-usd", help="...at this amount, after checking the vendor's dashboard,")
@click.option("--release", is_flag=True, help="...or release it: the vendor shows no charge.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def reconcile(ctx: click.Context, label, key_id, upstreams, dry_run, reservation, actual_usd, release, as_json) -> None:
    """Correct the ledger once the truth is known.

    Without --reservation: fetch the final price of every Twilio message or call that was
    counted at Keybrake's estimate (Twilio has no price at creation) and correct the spend.

    With --reservation ID: settle a reservation whose outcome was unknown (the connection died
    after the request was sent), at --actual-usd X or with --release.
    """
    fmt = "json" if as_json else "table"
    if reservation is not None:
        _by_hand(ctx, reservation, actual_usd, release, fmt)
        return
    if actual_usd or release:
        raise click.UsageError("--actual-usd and --release go with --reservation")
    base_url = TWILIO_BASE_URL
    for entry in upstreams:
        vendor, _, url = entry.partition("=")
        if vendor != "twilio" or not url:
            raise click.UsageError(f"--upstream takes twilio=URL, got {entry!r}")
        base_url = url
    rows = []
    with installation(ctx) as kb:
        for result in reconcile_twilio(kb, base_url=base_url, label=label, key_id=key_id, dry_run=dry_run):
            correction = result.correction
            rows.append({
                "reservation": result.check.reservation_id, "key_id": result.check.key_id,
                "object_id": result.check.object_id, "estimate_usd": format_usd(result.check.estimated_micros),
                "final_usd": format_usd(correction.after_micros) if correction else None,
                "change_usd": _signed(correction.delta_micros) if correction else None,
                "note": result.problem or ("would correct" if dry_run else "corrected"),
            })
    emit(rows, ["reservation", "key_id", "object_id", "estimate_usd", "final_usd", "change_usd", "note"], fmt)
    if not as_json:
        corrected = [r for r in rows if r["final_usd"] is not None]
        click.echo(f"\n{len(rows)} estimated call(s) checked, {len(corrected)} "
                   f"{'would be ' if dry_run else ''}corrected, {len(rows) - len(corrected)} left as estimated.",
                   err=True)


def _by_hand(ctx: click.Context, reservation: int, actual_usd: str | None, release: bool, fmt: str) -> None:
    if bool(actual_usd) == release:
        raise click.UsageError("give exactly one of --actual-usd X or --release")
    try:
        actual = None if release else usd_to_micros(actual_usd)
    except InvalidAmount as failure:
        raise click.BadParameter(str(failure), param_hint="--actual-usd") from None
    with installation(ctx) as kb:
        try:
            correction = resolve_by_hand(kb.ledger, reservation, actual)
        except NotCorrectable as failure:
            raise click.ClickException(str(failure)) from None
    emit([{"reservation": reservation, "key_id": correction.key_id, "held_usd": format_usd(correction.before_micros),
           "spent_usd": format_usd(correction.after_micros), "state": "released" if release else "settled"}],
         ["reservation", "key_id", "held_usd", "spent_usd", "state"], fmt)


def _signed(micros: int) -> str:
    return ("-" if micros < 0 else "+") + format_usd(abs(micros))


COMMANDS = (reconcile,)
