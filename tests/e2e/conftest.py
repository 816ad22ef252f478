import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import stripe

from keybrake_addon.fakes.fake_stripe import FakeStripe
from keybrake_addon.proxy_process import ProxyProcess
from support.postgres import fresh_database, refill_from_template

from .helpers import REAL_SECRET, keybrake, keybrake_json


@dataclass(frozen=True)
class HomeTemplate:
    """A home made once per session by the CLI (init, the Stripe secret, `env`'s CA bundle), and,
    on PostgreSQL, the database it initialized. Each test gets a copy of both: three CLI runs a
    test (about 2 s on these machines) would be most of an end-to-end test's setup."""

    home: Path
    database: str | None = None  # the template database's name (PostgreSQL)


def _make_home(path: Path, database_url: str | None) -> Path:
    database = ("--database", database_url) if database_url else ()
    keybrake(path, *database, "init")
    keybrake(path, *database, "secret", "set", "stripe", stdin=REAL_SECRET + "\n")
    keybrake(path, *database, "env")  # the CA bundle the SDKs are pointed at: no test need run it again
    return path


@pytest.fixture(scope="session")
def sqlite_home_template(tmp_path_factory) -> HomeTemplate:
    return HomeTemplate(_make_home(tmp_path_factory.mktemp("template") / "home", None))


@pytest.fixture(scope="session")
def postgres_home_template(tmp_path_factory, postgres_server):
    with fresh_database(postgres_server.url) as url:
        home = _make_home(tmp_path_factory.mktemp("template-pg") / "home", url)
        yield HomeTemplate(home, urlsplit(url).path.lstrip("/"))


@pytest.fixture
def home(tmp_path, database_url, request):
    """An initialized home with the Stripe secret set (and, on PostgreSQL, its own database)."""
    if database_url is None:
        template = request.getfixturevalue("sqlite_home_template")
    else:
        template = request.getfixturevalue("postgres_home_template")
        refill_from_template(request.getfixturevalue("postgres_server").url, database_url, template.database)
    return Path(shutil.copytree(template.home, tmp_path / "home"))


@pytest.fixture
def ledger_of(home, database_url):
    """Opens the test's ledger (either backend) to read what the proxy wrote."""
    from keybrake_addon.ledger.opening import database_of, open_ledger

    opened = []

    def open_it():
        opened.append(open_ledger(database_of(database_url, home / "keybrake.db")))
        return opened[-1]

    yield open_it
    for ledger in opened:
        ledger.close()


@pytest.fixture
def fake_stripe():
    with FakeStripe(secret=REAL_SECRET) as fake:
        yield fake


@pytest.fixture
def proxy(home, fake_stripe, tmp_path):
    running = ProxyProcess(home=home, upstreams=(f"stripe={fake_stripe.url}",), log_path=tmp_path / "proxy.log").start()
    yield running
    running.stop()


@pytest.fixture
def api_proxy(home, fake_stripe, tmp_path):
    """The proxy with its API listener too (the vault API and the /stripe base-URL route)."""
    running = ProxyProcess(home=home, upstreams=(f"stripe={fake_stripe.url}",), log_path=tmp_path / "proxy.log",
                           extra_args=("--api-port", "0")).start()
    yield running
    running.stop()


@pytest.fixture
def stripe_client_for(proxy, home, monkeypatch):
    """StripeClient factory that goes through the proxy the way a worker does: HTTPS_PROXY + CA bundle."""
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    # stripe-python pins its own CA file; the bundle from `keybrake env` (the home has it) adds the Keybrake CA.
    monkeypatch.setattr(stripe, "ca_bundle_path", str(home / "certs" / "keybrake-ca-bundle.pem"))

    def make(vault_key: str, retries: int = 0) -> stripe.StripeClient:
        return stripe.StripeClient(vault_key, max_network_retries=retries)

    return make


@pytest.fixture
def issue(home):
    def make(*args: str) -> dict:
        return keybrake_json(home, "issue", "--vendor", "stripe", *args)

    return make


@pytest.fixture
def tls_echo_server(tmp_path):
    """An HTTPS server on loopback with its own self-signed certificate, echoing request headers."""
    import datetime
    import json
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from ipaddress import ip_address

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "echo-cert.pem", tmp_path / "echo-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))

    class Echo(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", cert_path
    server.shutdown()
    server.server_close()


@pytest.fixture
def stripe_client_for_proxy(home, monkeypatch):
    """Like stripe_client_for, for a proxy the test started itself."""

    def for_proxy(proxy):
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.setattr(stripe, "ca_bundle_path", str(home / "certs" / "keybrake-ca-bundle.pem"))
        return lambda vault_key: stripe.StripeClient(vault_key, max_network_retries=0)

    return for_proxy
