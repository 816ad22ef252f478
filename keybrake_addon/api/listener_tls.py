"""The API listener's own TLS certificate, from the user, in the form mitmproxy serves it.

mitmproxy picks a certificate per SNI name through its `certs` option, so the user's
certificate is registered for exactly the names it carries. The forward proxy's interception
of vendor hosts keeps using the Keybrake CA.
"""

from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from ..home import KeybrakeHome, write_private_file


def api_listener_certs(home: KeybrakeHome, cert_path: str, key_path: str) -> list[str]:
    cert_pem = Path(cert_path).read_bytes()
    cert = x509.load_pem_x509_certificate(cert_pem)
    combined = home.certs / "api-listener.pem"
    combined.unlink(missing_ok=True)
    write_private_file(combined, Path(key_path).read_bytes() + b"\n" + cert_pem)
    return [f"{name}={combined}" for name in _names(cert)]


def _names(cert: x509.Certificate) -> list[str]:
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += san.get_values_for_type(x509.DNSName)
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    names += [attr.value for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if not names:
        # A catch-all entry would also replace the certificates forged for the vendor hosts.
        raise ValueError("the API certificate names no host (no subjectAltName or common name)")
    return list(dict.fromkeys(names))
