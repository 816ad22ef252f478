"""AES-256-GCM encryption of vendor secrets under the installation's master key.

The vendor and secret name are the associated data, so a ciphertext copied onto another
row does not decrypt. A wrong master key fails loudly (the GCM tag), never as garbage.
"""

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MASTER_KEY_BYTES = 32
NONCE_BYTES = 12


class MasterKeyError(Exception):
    """The master key is missing, malformed, or not the one the vault was written with."""


@dataclass(frozen=True)
class Sealed:
    nonce: bytes
    ciphertext: bytes


def new_master_key() -> bytes:
    return os.urandom(MASTER_KEY_BYTES)


def encode_master_key(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode("ascii")


def decode_master_key(text: str, *, source: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip().encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise MasterKeyError(f"the master key in {source} is not valid base64") from None
    if len(key) != MASTER_KEY_BYTES:
        raise MasterKeyError(f"the master key in {source} must be {MASTER_KEY_BYTES} bytes, got {len(key)}")
    return key


def _associated_data(vendor: str, name: str) -> bytes:
    return f"keybrake-secret\x00{vendor}\x00{name}".encode()


def seal(master_key: bytes, vendor: str, name: str, plaintext: str) -> Sealed:
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(master_key).encrypt(nonce, plaintext.encode("utf-8"), _associated_data(vendor, name))
    return Sealed(nonce=nonce, ciphertext=ciphertext)


def unseal(master_key: bytes, vendor: str, name: str, sealed: Sealed) -> str:
    try:
        plaintext = AESGCM(master_key).decrypt(sealed.nonce, sealed.ciphertext, _associated_data(vendor, name))
    except InvalidTag:
        raise MasterKeyError(
            f"cannot decrypt the {vendor} secret {name!r}: the master key is not the one it was "
            "stored with (check KEYBRAKE_MASTER_KEY or the home's master.key)"
        ) from None
    return plaintext.decode("utf-8")


def derive_subkey(master_key: bytes, purpose: str) -> bytes:
    """A key for one purpose, so the master key itself is used only for sealing."""
    return hmac.new(master_key, f"keybrake-subkey\x00{purpose}".encode(), hashlib.sha256).digest()


def master_key_check(master_key: bytes) -> str:
    """A value stored beside the vault that tells whether a later master key is the same one."""
    return hmac.new(master_key, b"keybrake-master-key-check", hashlib.sha256).hexdigest()[:32]


def fingerprint(secret: str) -> str:
    """Short, non-reversible id for showing which secret is stored (8 hex chars of SHA-256)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()[:8]
