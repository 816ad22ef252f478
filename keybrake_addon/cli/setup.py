"""Commands that set an installation up and run it: init, env, proxy, demo."""

import sys
from urllib.parse import urlsplit

import click
from mitmproxy.exceptions import OptionsError

from ..bound_defaults import (DEFAULT_HEADER_TIMEOUT_S, DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MAX_CONNS,
                              DEFAULT_MAX_CONNS_PER_ADDRESS, DEFAULT_MAX_VENDOR_BODY)
from ..home import KeybrakeHome
from ..installation import initialise
from ..api.listener_tls import api_listener_certs
from ..draining import DEFAULT_DRAIN_TIMEOUT_S
from ..egress_policy import EgressMode, default_mode
from ..proxy_auth import CREDENTIAL_CACHE_S, is_loopback
from ..worker_env import env_lines
from .context import database_of_ctx, home_of


@click.command()
@click.pass_context
def init(ctx: click.Context) -> None:
    """Create the Keybrake home: database, master key (0600) and CA. Safe to run again."""
    home = home_of(ctx)
    database = database_of_ctx(ctx)
    try:
        report = initialise(home, database)
    except Exception as error:  # a half-made home must say why, not show a traceback
        raise click.ClickException(f"could not initialise {home.root}: {error}") from None
    for created, what in ((report.created_home, f"home {home.root}"),
                          (report.created_master_key, f"master key {home.master_key_file} (mode 0600)"),
                          (report.created_ca, f"CA certificate {home.ca_cert}")):
        click.echo(("created " if created else "exists  ") + what)
    click.echo(f"ledger  {database.redacted()}")
    click.echo(NEXT_STEPS + """
  3. Run the proxy and point workers at it:
       keybrake proxy
       keybrake env""")


NEXT_STEPS = """
Next:
  1. Store a real secret (read from stdin, never from the command line):
       keybrake secret set stripe < stripe-secret.txt
  2. Issue a capped key for a run:
       keybrake issue --vendor stripe --daily-usd-cap 500 --allow "POST /v1/payment_intents" --label my-run"""


PROXY_AUTH_CHOICE = click.Choice(["required", "off"])


@click.command()
@click.option("--proxy-url", default="http://127.0.0.1:8080", show_default=True,
              help="Where workers reach the proxy, as they write it (never 0.0.0.0).")
@click.option("--proxy-auth", type=PROXY_AUTH_CHOICE,
              help="Whether the proxy requires a credential (as `keybrake proxy --proxy-auth`). "
                   "Default: required unless the proxy URL's host is loopback.")
@click.pass_context
def env(ctx: click.Context, proxy_url: str, proxy_auth: str | None) -> None:
    """Print the environment lines a worker needs to go through Keybrake."""
    home = home_of(ctx)
    if not home.ca_cert.exists():
        raise click.ClickException(f"no CA at {home.ca_cert}; run `keybrake init` first")
    if proxy_auth is None:
        proxy_auth = "off" if is_loopback(urlsplit(proxy_url).hostname or "") else "required"
    try:
        lines = env_lines(home, proxy_url, proxy_auth == "required")
    except ValueError as failure:
        raise click.UsageError(f"--proxy-url: {failure}") from None
    click.echo("\n".join(lines))


@click.command()
@click.option("--listen-host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--listen-port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0 picks a free one and prints it).")
@click.option("--upstream", "upstreams", multiple=True, metavar="VENDOR=URL",
              help="Send a vendor's traffic to another base URL, e.g. stripe=http://127.0.0.1:12111. Repeatable.")
@click.option("--egress", type=click.Choice([mode.value for mode in EgressMode]),
              help="What to do with hosts Keybrake does not front: refuse them all (deny), only those on "
                   "--egress-allow and never to private addresses (allowlist), or tunnel them (open). "
                   "Default: open on a loopback listen host, allowlist elsewhere.")
@click.option("--egress-allow", "egress_allow", multiple=True, metavar="PATTERN",
              help="With --egress allowlist: a host that may be reached, e.g. api.trigger.dev, *.example.com, "
                   "host:port. Repeatable.")
@click.option("--egress-allow-private", "egress_allow_private", multiple=True, metavar="CIDR",
              help="With --egress allowlist: private, loopback or link-local addresses an allowed host may "
                   "resolve to, e.g. 10.1.2.0/24. Repeatable.")
@click.option("--strict-egress", is_flag=True, help="The same as --egress deny.")
@click.option("--db-busy-timeout", default=5.0, show_default=True, type=click.FloatRange(0.01),
              help="Seconds to wait for another process's database lock before refusing with 503.")
@click.option("--api-port", type=click.IntRange(0, 65535),
              help="Also serve the vault API (/vault/*) and base-URL vendor routes (/stripe/*, /twilio/*, "
                   "/resend/*) on this port (0 picks a free one).")
@click.option("--api-tls-cert", type=click.Path(exists=True, dir_okay=False),
              help="PEM certificate for the API listener (with --api-tls-key); without it, plain HTTP.")
@click.option("--api-tls-key", type=click.Path(exists=True, dir_okay=False), help="PEM private key for --api-tls-cert.")
@click.option("--health-port", type=click.IntRange(0, 65535),
              help="Also serve GET /healthz and GET /readyz (no token) on this port of the listen host "
                   "(0 picks a free one). The API listener serves them too.")
@click.option("--metrics-port", type=click.IntRange(0, 65535),
              help="Also serve GET /metrics (Prometheus text format) without a token on this port of "
                   "--metrics-host (0 picks a free one). The API listener serves /metrics too, behind an "
                   "admin token.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, metavar="ADDRESS",
              help="The IP address --metrics-port listens on. Anyone who reaches it reads the metrics: "
                   "keep it on loopback or a private scrape network.")
@click.option("--drain-timeout", default=DEFAULT_DRAIN_TIMEOUT_S, show_default=True, type=click.FloatRange(0),
              help="On SIGTERM, seconds to let calls in flight finish and settle before exiting.")
@click.option("--max-vendor-body", default=DEFAULT_MAX_VENDOR_BODY, show_default=True, metavar="SIZE",
              help="Largest request body to a vendor (k/m suffixes). Resend emails with attachments need up to 41m.")
@click.option("--header-timeout", default=DEFAULT_HEADER_TIMEOUT_S, show_default=True, type=click.FloatRange(0.1),
              help="Seconds a client has to send a request's line and headers in full.")
@click.option("--idle-timeout", default=DEFAULT_IDLE_TIMEOUT_S, show_default=True, type=click.FloatRange(0.1),
              help="Seconds a kept-alive client connection may wait for its next request before it is closed.")
@click.option("--max-conns-per-address", default=DEFAULT_MAX_CONNS_PER_ADDRESS, show_default=True,
              type=click.IntRange(1), help="Most connections open at once from one client address.")
@click.option("--max-conns", default=DEFAULT_MAX_CONNS, show_default=True, type=click.IntRange(1),
              help="Most client connections open at once, all addresses together.")
@click.option("--proxy-auth", type=PROXY_AUTH_CHOICE,
              help="Require Proxy-Authorization on the forward listener, with a worker token "
                   "(`keybrake worker-token create`) or a vault key as the password. "
                   "Default: required unless --listen-host is a loopback address.")
@click.option("--insecure-open-proxy", is_flag=True,
              help="Allow --proxy-auth off on a non-loopback address: anyone who reaches the port can tunnel "
                   "anywhere through it.")
@click.option("--access-log", type=click.Choice(["json", "text", "off"]),
              help="One line per vendor call and per refusal (key id, label, vendor, method, path, decision, "
                   "status, amounts, object id, duration; never a secret or a vault key). text is logfmt. "
                   "Default: text when stderr is a terminal, else json (for a log shipper); json with "
                   "--access-log-file.")
@click.option("--access-log-file", type=click.Path(dir_okay=False), metavar="PATH",
              help="Append the access log to this file instead of stderr; it is reopened when logrotate "
                   "moves it.")
@click.pass_context
def proxy(ctx: click.Context, listen_host: str, listen_port: int, upstreams: tuple[str, ...],
          egress: str | None, egress_allow: tuple[str, ...], egress_allow_private: tuple[str, ...],
          strict_egress: bool, db_busy_timeout: float, api_port: int | None, api_tls_cert: str | None,
          api_tls_key: str | None, health_port: int | None, metrics_port: int | None, metrics_host: str,
          drain_timeout: float, max_vendor_body: str, header_timeout: float, idle_timeout: float,
          max_conns_per_address: int, max_conns: int, proxy_auth: str | None,
          insecure_open_proxy: bool, access_log: str | None, access_log_file: str | None) -> None:
    """Run the forward proxy. Initialises the home first if it is new.

    Workers set HTTPS_PROXY to it and trust the Keybrake CA (see `keybrake env`). Only
    api.stripe.com, api.twilio.com and api.resend.com are intercepted; every other host is
    tunnelled untouched if the egress policy (--egress) lets it through.

    SIGTERM drains: new connections are refused, /readyz answers 503, calls in flight finish
    and settle for up to --drain-timeout seconds, then the proxy exits.
    """
    from ..proxy import Listening, PortInUse, ProxySettings, serve

    home = home_of(ctx)
    database = database_of_ctx(ctx)
    if not home.is_initialised():
        try:
            initialise(home, database)
        except Exception as error:  # noqa: BLE001 - say why, not a traceback
            raise click.ClickException(f"could not initialise {home.root}: {error}") from None
        click.echo(f"initialised a new Keybrake home at {home.root}", err=True)
        click.echo(NEXT_STEPS, err=True)

    egress = _egress_mode(egress, strict_egress, listen_host, bool(egress_allow or egress_allow_private))
    exposed = not is_loopback(listen_host)
    proxy_auth = proxy_auth or ("required" if exposed else "off")
    open_relay = exposed and proxy_auth == "off"
    if open_relay and not insecure_open_proxy:
        raise click.UsageError(
            f"--proxy-auth off on {listen_host or 'every interface'} would make an open proxy: anyone who reaches "
            "the port could tunnel anywhere through it. Keep --proxy-auth required (workers put a worker token in "
            "the proxy URL, see `keybrake worker-token create`), or add --insecure-open-proxy if that is really meant.")
    access_log = _access_log_format(access_log, access_log_file)
    if bool(api_tls_cert) != bool(api_tls_key):
        raise click.UsageError("--api-tls-cert and --api-tls-key go together")
    if api_tls_cert and api_port is None:
        raise click.UsageError("--api-tls-cert needs --api-port")
    scheme = "https" if api_tls_cert else "http"
    try:
        tls_certs = api_listener_certs(home, api_tls_cert, api_tls_key) if api_tls_cert else []
    except ValueError as failure:
        raise click.ClickException(f"--api-tls-cert: {failure}") from None

    def announce(listening: Listening) -> None:
        forward, api, health = listening.forward, listening.api, listening.health
        click.echo(f"Keybrake proxy listening on http://{forward[0]}:{forward[1]} (home {home.root}, "
                   f"ledger {database.redacted()})")
        if api is not None:
            click.echo(f"Keybrake vault API and base-URL routes on {scheme}://{api[0]}:{api[1]} "
                       "(/vault/..., /stripe/..., /twilio/..., /resend/...; /metrics with an admin token)")
        if health is not None:
            click.echo(f"Keybrake health checks on http://{health[0]}:{health[1]} (/healthz, /readyz)")
        if listening.metrics is not None:
            host, port = listening.metrics
            shown = f"[{host}]" if ":" in host else host
            click.echo(f"Keybrake metrics on http://{shown}:{port}/metrics (no token"
                       + ("" if is_loopback(host) else f"; anyone who reaches {host} can read them") + ")")
        click.echo(f"Keybrake egress policy for other hosts: {egress}"
                   + (f" ({len(egress_allow)} pattern{'' if len(egress_allow) == 1 else 's'})"
                      if egress == EgressMode.ALLOWLIST else ""))
        for upstream in upstreams:  # a proxy pointed at a fake must not look like a real one
            click.echo(f"Keybrake sends {upstream.partition('=')[0]} traffic to {upstream.partition('=')[2]} "
                       "(--upstream), not to the vendor")
        if open_relay:
            click.echo("WARNING: INSECURE OPEN PROXY: proxy authentication is off on a non-loopback address "
                       "(--insecure-open-proxy). Anyone who reaches this port can tunnel anywhere through it.")
        elif proxy_auth == "required":
            click.echo("Proxy authentication required: workers put a worker token (`keybrake worker-token create`) "
                       f"or their vault key as the proxy URL's password; a revoked one stops working within "
                       f"{CREDENTIAL_CACHE_S:g} s")
        click.echo("Worker environment:")
        try:
            lines = env_lines(home, f"http://{forward[0]}:{forward[1]}", proxy_auth == "required")
        except ValueError:  # listening on every interface: only the operator knows the address workers use
            lines = [f"# run `keybrake env --proxy-url http://<this host>:{forward[1]}` with the address workers reach"]
        for line in lines:
            click.echo("  " + line)
        click.echo("", nl=True)

    settings = ProxySettings(home=home, listen_host=listen_host, listen_port=listen_port, api_port=api_port,
                             upstreams=upstreams, egress=egress, egress_allow=egress_allow,
                             egress_allow_private=egress_allow_private, db_busy_timeout_s=db_busy_timeout,
                             database_url=ctx.find_root().obj.database_url or "",
                             api_tls_certs=tls_certs, health_port=health_port, metrics_port=metrics_port,
                             metrics_host=metrics_host, drain_timeout_s=drain_timeout,
                             on_listening=[announce], proxy_auth=proxy_auth, insecure_open_proxy=insecure_open_proxy,
                             access_log=access_log, access_log_file=access_log_file or "",
                             bounds={"keybrake_max_vendor_body": max_vendor_body,
                                     "keybrake_header_timeout": header_timeout,
                                     "keybrake_idle_timeout": idle_timeout,
                                     "keybrake_max_conns_per_address": max_conns_per_address,
                                     "keybrake_max_conns": max_conns})
    try:
        serve(settings)
    except (OptionsError, PortInUse) as error:
        raise click.ClickException(str(error)) from None


def _access_log_format(chosen: str | None, path: str | None) -> str:
    """A person at a terminal reads logfmt; a pipe or a file is read by a log shipper, which parses JSON."""
    if chosen == "off" and path:
        raise click.UsageError("--access-log-file needs --access-log json or text, not off")
    if chosen is not None:
        return chosen
    return "json" if path or not sys.stderr.isatty() else "text"


def _egress_mode(egress: str | None, strict_egress: bool, listen_host: str, listing: bool) -> str:
    """--strict-egress is an alias of --egress deny; an allowlist implies its mode; else the listen host decides."""
    if strict_egress and egress not in (None, EgressMode.DENY):
        raise click.UsageError(f"--strict-egress means --egress deny; it contradicts --egress {egress}")
    egress = EgressMode.DENY.value if strict_egress else egress
    if listing and egress not in (None, EgressMode.ALLOWLIST):
        # Silently ignored entries would make an operator believe a host is allowed, or a range refused.
        raise click.UsageError(f"--egress-allow and --egress-allow-private apply to --egress allowlist, not {egress}")
    if egress is None:
        return EgressMode.ALLOWLIST.value if listing else default_mode(listen_host).value
    return egress


@click.command()
@click.option("--charges", default=50, show_default=True, help="How many parallel $50 charges the batch tries.")
@click.option("--cap", default="500", show_default=True, help="The key's daily cap in USD.")
@click.pass_context
def demo(ctx: click.Context, charges: int, cap: str) -> None:
    """A self-contained runaway batch against a fake Stripe: watch the cap stop it.

    Starts a fake Stripe on loopback and the proxy, issues a capped key, fires parallel
    $50 PaymentIntents through the official stripe SDK and prints the spend table.
    Uses a throwaway home unless --home is given.
    """
    from ..demo import run_demo

    explicit = ctx.find_root().params.get("home")
    run_demo(KeybrakeHome.resolve(explicit) if explicit else None, charges=charges, cap_usd=cap)


COMMANDS = (init, env, proxy, demo)
