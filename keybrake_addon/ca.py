"""The per-installation certificate authority that workers trust for the vendor hosts."""

from cryptography.hazmat.primitives import serialization
from mitmproxy import certs as mitm_certs

from .home import KeybrakeHome, write_private_file

CA_COMMON_NAME = "Keybrake CA"


def ensure_ca(home: KeybrakeHome) -> bool:
    """Create the CA unless it exists. Returns whether it was created."""
    home.certs.mkdir(parents=True, exist_ok=True)
    created = False
    if not home.ca_key.exists():
        key, cert = mitm_certs.create_ca(organization="Keybrake", cn=CA_COMMON_NAME, key_size=2048)
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PrivateFormat.TraditionalOpenSSL,
            encryption_algorithm=serialization.NoEncryption(),
        )
        write_private_file(home.ca_key, key_pem + cert_pem)
        home.ca_cert.unlink(missing_ok=True)
        home.ca_cert.write_bytes(cert_pem)
        created = True
    _link_for_mitmproxy(home)
    return created


def _link_for_mitmproxy(home: KeybrakeHome) -> None:
    # mitmproxy reads its CA from `<confdir>/mitmproxy-ca.pem` (key + cert). A link keeps a single
    # copy of the private key on disk instead of a second file to protect.
    home.mitmproxy_confdir.mkdir(parents=True, exist_ok=True)
    link = home.mitmproxy_confdir / "mitmproxy-ca.pem"
    if not link.is_symlink():
        link.unlink(missing_ok=True)
        link.symlink_to(home.ca_key)
    # mitmproxy writes its DH parameters here on first start unless they exist: writing them now
    # lets a proxy start on a home whose volume is (for now) read-only.
    mitm_certs.CertStore.load_dhparam(home.mitmproxy_confdir / "mitmproxy-dhparam.pem")
