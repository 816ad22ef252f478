"""The API listener with the user's own certificate; the vendor hosts keep the Keybrake CA."""

import datetime
import ssl

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keybrake_addon.proxy_process import ProxyProcess


def self_signed(tmp_path, name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "api.pem", tmp_path / "api-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_api_listener_serves_the_users_certificate(home, fake_stripe, tmp_path, issue):
    cert_path, key_path = self_signed(tmp_path, "localhost")
    proxy = ProxyProcess(home=home, upstreams=(f"stripe={fake_stripe.url}",), log_path=tmp_path / "p.log",
                         extra_args=("--api-port", "0", "--api-tls-cert", str(cert_path),
                                     "--api-tls-key", str(key_path))).start()
    try:
        assert proxy.api_url.startswith("https://")
        port = proxy.api_url.rsplit(":", 1)[1]
        trusting_the_user_cert = ssl.create_default_context(cafile=str(cert_path))
        answer = httpx.get(f"https://localhost:{port}/vault/openapi.json", verify=trusting_the_user_cert)
        assert answer.json()["info"]["title"] == "Keybrake vault API"
        # The same port also parses plain HTTP (mitmproxy's reverse mode): refused, never served.
        plain = httpx.get(f"http://localhost:{port}/vault/openapi.json")
        assert plain.status_code == 403 and plain.json()["error"]["code"] == "tls_required"
        # Forward interception of a vendor host still presents a Keybrake-CA certificate.
        key = issue("--total-usd-cap", "5", "--allow", "GET /v1/balance")
        keybrake_ca = ssl.create_default_context(cafile=str(home / "certs" / "keybrake-ca.pem"))
        with httpx.Client(proxy=proxy.url, verify=keybrake_ca) as client:
            balance = client.get("https://api.stripe.com/v1/balance",
                                 headers={"authorization": f"Bearer {key['vault_key']}"})
        assert balance.status_code == 200
    finally:
        proxy.stop()
