"""The environment a worker needs to reach vendors through Keybrake."""

import ipaddress
from urllib.parse import urlsplit

import certifi

from .home import KeybrakeHome


def ca_bundle(home: KeybrakeHome) -> str:
    """Public roots plus the Keybrake CA, for clients that replace (not extend) their trust store.

    Pointing REQUESTS_CA_BUNDLE at the Keybrake CA alone would break every tunnelled host,
    whose real certificates only public roots can verify.
    """
    bundle = home.certs / "keybrake-ca-bundle.pem"
    wanted = open(certifi.where(), "rb").read() + b"\n" + home.ca_cert.read_bytes()
    if not bundle.exists() or bundle.read_bytes() != wanted:
        try:
            bundle.write_bytes(wanted)
        except OSError:
            if not bundle.exists():
                raise
            # A read-only home keeps the bundle it has: older public roots, the same Keybrake CA.
    return str(bundle)


WORKER_TOKEN_PLACEHOLDER = "<WORKER_TOKEN>"


def worker_proxy_url(proxy_url: str, proxy_auth: bool) -> str:
    """The proxy URL as a worker on another host writes it: with the credential's place when
    proxy authentication is on. Raises ValueError for a URL no worker can use."""
    parts = urlsplit(proxy_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected a proxy URL such as http://10.0.0.5:8080, got {proxy_url!r}")
    try:
        unspecified = ipaddress.ip_address(parts.hostname).is_unspecified
    except ValueError:
        unspecified = False
    if unspecified:
        raise ValueError(f"{parts.hostname} is where the proxy listens (every interface), not an address a "
                         "worker can reach: pass --proxy-url with this host's name or IP, "
                         f"e.g. --proxy-url {parts.scheme}://proxy.internal:{parts.port or 8080}")
    if not proxy_auth or parts.username is not None:
        return proxy_url
    return parts._replace(netloc=f"worker:{WORKER_TOKEN_PLACEHOLDER}@{parts.netloc}").geturl()


def env_lines(home: KeybrakeHome, proxy_url: str, proxy_auth: bool = False) -> list[str]:
    url = worker_proxy_url(proxy_url, proxy_auth)
    try:
        bundle = ca_bundle(home)
    except OSError as error:
        bundle = f"<not written: {error.strerror}; run `keybrake env` once {home.certs} is writable>"
    credential = []
    if proxy_auth:
        credential = [f"# {WORKER_TOKEN_PLACEHOLDER}: a token from `keybrake worker-token create` (or the worker's "
                      "vault key); every SDK sends it as Proxy-Authorization from the URL"]
    return [
        *credential,
        f"export HTTPS_PROXY={url}",
        f"export HTTP_PROXY={url}  # twilio-node reads only this one",
        f"export NODE_EXTRA_CA_CERTS={home.ca_cert}",
        f"export REQUESTS_CA_BUNDLE={bundle}",
        f"# stripe-python ignores REQUESTS_CA_BUNDLE: set stripe.ca_bundle_path = \"{bundle}\"",
        "# stripe-node ignores HTTPS_PROXY: pass httpAgent: new HttpsProxyAgent(process.env.HTTPS_PROXY)",
    ]
