"""Vault keys: the scoped stand-ins that workers send where the real secret would go.

A vault key is derived from its non-secret key_id with a server-side secret (HMAC-SHA256), so
the same key can be handed out again to a retried parent job without storing it anywhere.
Only its SHA-256 hash is stored for lookup.
"""

import hashlib
import hmac
import secrets

KEY_ID_PREFIX = "kbk_"
MARKER = "kb_"
_SECRET_CHARS = 43  # base62 characters of the HMAC: about 256 bits
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# Where each vendor's SDK accepts the key, the vendor's own prefix is kept so the SDK treats it
# as a secret key; the `kb_` marker makes a leaked vault key recognisable as Keybrake's.
VENDOR_PREFIXES = {"stripe": "sk_" + MARKER, "resend": "re_" + MARKER, "twilio": MARKER}


def new_key_id() -> str:
    return KEY_ID_PREFIX + secrets.token_hex(10)


def _base62(data: bytes, length: int) -> str:
    number = int.from_bytes(data, "big")
    chars = []
    for _ in range(length):
        number, digit = divmod(number, 62)
        chars.append(_ALPHABET[digit])
    return "".join(chars)


def derive_vault_key(derivation_key: bytes, vendor: str, key_id: str) -> str:
    digest = hmac.new(derivation_key, f"{vendor}\x00{key_id}".encode(), hashlib.sha256).digest()
    return VENDOR_PREFIXES[vendor] + _base62(digest, _SECRET_CHARS)


def hash_vault_key(vault_key: str) -> str:
    # The key carries ~256 bits of entropy, so a fast hash is enough to make the stored value useless.
    return hashlib.sha256(vault_key.encode("utf-8")).hexdigest()


def is_vault_key_shaped(token: str) -> bool:
    """Whether the token has a Keybrake marker (it may still be unknown, revoked or expired)."""
    return any(token.startswith(prefix) and len(token) == len(prefix) + _SECRET_CHARS
               for prefix in VENDOR_PREFIXES.values())
