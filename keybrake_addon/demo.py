"""`keybrake demo`: a runaway batch against a fake Stripe, stopped by a vault key's cap.

Everything runs on loopback: a fake Stripe, the real proxy as a child process, and the
official stripe SDK as the client, exactly as a worker would use it.
"""

import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import click
import stripe

from .cli.output import table
from .fakes.fake_stripe import FakeStripe
from .home import KeybrakeHome
from .installation import initialise, open_installation
from .ledger.base import AuditFilter
from .money import format_usd, usd_to_micros
from .proxy_process import ProxyProcess
from .vault.issuance import KeyRequest, issue_key
from .views import spend_document
from .worker_env import ca_bundle

DEMO_SECRET = "sk_test_" + "keybrake0demo0upstream"
CHARGE = {"amount": 5000, "currency": "usd", "confirm": True, "payment_method": "pm_card_visa"}
LABEL = "demo/runaway-batch"


def run_demo(home: KeybrakeHome | None, *, charges: int, cap_usd: str) -> None:
    with ExitStack() as stack:
        if home is None:
            home = KeybrakeHome(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="keybrake-demo-"))))
        initialise(home)
        fake = stack.enter_context(FakeStripe(secret=DEMO_SECRET))
        installation = open_installation(home)
        stack.callback(installation.close)
        installation.vault.put("stripe", "demo", DEMO_SECRET)
        issued = issue_key(installation.ledger, installation.master_key, KeyRequest(
            vendor="stripe", secret_name="demo", label=LABEL, daily_cap_micros=usd_to_micros(cap_usd),
            allowlist=("POST /v1/payment_intents",), expires_in="1h"))
        click.echo(f"fake Stripe on {fake.url}; issued {issued.key_id} (label {LABEL}, daily cap ${cap_usd})")

        proxy = ProxyProcess(home=home.root, upstreams=(f"stripe={fake.url}",), log_path=home.root / "demo-proxy.log")
        stack.callback(proxy.stop)
        proxy.start()
        click.echo(f"proxy on {proxy.url}; firing {charges} parallel $50.00 PaymentIntents through the stripe SDK")

        stripe.ca_bundle_path = ca_bundle(home)
        client = stripe.StripeClient(issued.vault_key, proxy=proxy.url, max_network_retries=0)
        charged, stopped = _run_batch(client, charges)
        # Settlements land just after each reply: stopping the proxy waits for the last ones, so
        # the report shows settled spend, not holds.
        proxy.stop()
        click.echo(f"{len(charged)} charged, {len(stopped)} stopped at the cap; "
                   f"the fake Stripe moved ${format_usd(fake.money_moved_minor * 10_000)}.\n")
        _print_report(installation, issued.key_id)


def _run_batch(client: stripe.StripeClient, charges: int) -> tuple[list[str], list[str]]:
    charged: list[str] = []
    stopped: list[str] = []
    lock = threading.Lock()

    def one(_: int) -> None:
        try:
            intent = client.v1.payment_intents.create(params=CHARGE)
            outcome = (charged, intent.id)
        except stripe.RateLimitError as error:
            outcome = (stopped, error.headers.get("x-keybrake-cap-hit", ""))
        with lock:
            outcome[0].append(outcome[1])
            done = len(charged) + len(stopped)
            if sys.stdout.isatty() or done % 10 == 0 or done == charges:
                end = "" if sys.stdout.isatty() and done < charges else "\n"
                sys.stdout.write(f"\r  {done}/{charges} done: {len(charged)} charged, "
                                 f"{len(stopped)} stopped at the cap{end}")
                sys.stdout.flush()

    with ThreadPoolExecutor(max_workers=min(charges, 50)) as pool:
        list(pool.map(one, range(charges)))
    return charged, stopped


def _print_report(installation, key_id: str) -> None:
    spend = [spend_document(row) for row in installation.ledger.spend("label", AuditFilter(label=LABEL))]
    click.echo("spend (keybrake spend --label demo/runaway-batch):")
    click.echo(table(spend, ["label", "spent_usd", "reserved_usd", "calls", "allowed", "refused", "cap_hits"]))
    rows = [r for r in installation.ledger.audit_rows(AuditFilter(key_id=key_id)) if r["object_id"]]
    click.echo(f"\nPaymentIntents tied to the run label ({len(rows)}):")
    click.echo(table([{**r, "actual_usd": format_usd(r["actual_micros"])} for r in rows],
                     ["label", "object_id", "actual_usd", "status"]))
