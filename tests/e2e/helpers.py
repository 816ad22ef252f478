"""Helpers for end-to-end tests: run the CLI, the secret the fake Stripe accepts."""

from pathlib import Path

from support.settling import until_settled

from keybrake_addon.proxy_process import keybrake, keybrake_json

REAL_SECRET = "sk_test_" + "upstream0secret0for0tests"  # built at run time: no secret-shaped literal


def settled_key_json(home: Path, key_id: str, timeout_s: float = 15.0) -> dict:
    """`keys show KEY --json` once no hold is open, or as it stands when the bound runs out.

    The proxy settles a call just after writing its reply, so right after the SDK returns the
    last holds may still be counted as reserved.
    """
    shown: dict = {}

    def reserved() -> int:
        shown.update(keybrake_json(home, "keys", "show", key_id))
        return shown["reserved_usd"] != "0.00"

    until_settled(reserved, timeout_s)
    return shown


__all__ = ["REAL_SECRET", "keybrake", "keybrake_json", "settled_key_json"]


def api_address(proxy) -> tuple[str, int]:
    """The API listener's (host, port), for a raw socket."""
    host, port = proxy.api_url.removeprefix("http://").split(":")
    return host, int(port)
