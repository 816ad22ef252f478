"""Helpers for end-to-end tests: run the CLI, the secret the fake Stripe accepts."""

import time
from pathlib import Path

from keybrake_addon.proxy_process import keybrake, keybrake_json

REAL_SECRET = "sk_test_" + "upstream0secret0for0tests"  # built at run time: no secret-shaped literal


def settled_key_json(home: Path, key_id: str, timeout_s: float = 15.0) -> dict:
    """`keys show KEY --json` once no hold is open, or as it stands when the bound runs out.

    The proxy settles a call just after writing its reply, so right after the SDK returns the
    last holds may still be counted as reserved.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        shown = keybrake_json(home, "keys", "show", key_id)
        if shown["reserved_usd"] == "0.00" or time.monotonic() > deadline:
            return shown
        time.sleep(0.05)


__all__ = ["REAL_SECRET", "keybrake", "keybrake_json", "settled_key_json"]
