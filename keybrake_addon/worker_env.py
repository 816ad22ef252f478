"""The environment a worker needs to reach vendors through Keybrake."""

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


def env_lines(home: KeybrakeHome, proxy_url: str) -> list[str]:
    try:
        bundle = ca_bundle(home)
    except OSError as error:
        bundle = f"<not written: {error.strerror}; run `keybrake env` once {home.certs} is writable>"
    return [
        f"export HTTPS_PROXY={proxy_url}",
        f"export HTTP_PROXY={proxy_url}  # twilio-node reads only this one",
        f"export NODE_EXTRA_CA_CERTS={home.ca_cert}",
        f"export REQUESTS_CA_BUNDLE={bundle}",
        f"# stripe-python ignores REQUESTS_CA_BUNDLE: set stripe.ca_bundle_path = \"{bundle}\"",
        "# stripe-node ignores HTTPS_PROXY: pass httpAgent: new HttpsProxyAgent(process.env.HTTPS_PROXY)",
    ]
