"""Storing and opening real vendor secrets. Plaintext exists only inside these calls."""

from ..ledger.base import KeyRecord, Ledger, SealedSecret, SecretInfo
from ..text import has_control_characters
from .crypto import MasterKeyError, Sealed, fingerprint, seal, unseal
from .vault_keys import is_vault_key_shaped

STRIPE_MODES = {"sk_test_": "test", "rk_test_": "test", "sk_live_": "live", "rk_live_": "live"}


class UnacceptableSecret(ValueError):
    """A value that cannot be the vendor's real secret; the message says what it looks like instead."""


def check_secret(vendor: str, value: str) -> None:
    """Refuse what is surely not a real secret, before it is stored and handed to workers' calls."""
    if not value.strip():
        raise UnacceptableSecret("the secret is empty")
    if any(char.isspace() for char in value) or has_control_characters(value):
        raise UnacceptableSecret("the secret contains spaces or control characters; paste the secret alone")
    if is_vault_key_shaped(value):
        raise UnacceptableSecret("that is a Keybrake vault key, not the vendor's real secret; store the secret "
                                 f"from the {vendor} dashboard (vault keys only work through the proxy)")
    if value.startswith("pk_"):
        raise UnacceptableSecret("that is a publishable key (pk_...), which cannot make server-side calls; "
                                 "store the secret key (sk_...) or a restricted key (rk_...)")


def stripe_mode(value: str) -> str | None:
    """'test' or 'live' for a Stripe secret or restricted key; None when the prefix says neither."""
    return next((mode for prefix, mode in STRIPE_MODES.items() if value.startswith(prefix)), None)


class SecretVault:
    def __init__(self, ledger: Ledger, master_key: bytes) -> None:
        self._ledger = ledger
        self._master_key = master_key

    def put(self, vendor: str, name: str, plaintext: str, account_sid: str | None = None,
            auth_user: str | None = None) -> SecretInfo:
        """Store or rotate a secret. Vault keys refer to (vendor, name), so they keep working."""
        sealed = seal(self._master_key, vendor, name, plaintext)
        self._ledger.put_secret(vendor, name, sealed.nonce, sealed.ciphertext, fingerprint(plaintext), account_sid,
                                auth_user)
        return next(info for info in self._ledger.list_secrets() if (info.vendor, info.name) == (vendor, name))

    def mode_change(self, vendor: str, name: str, plaintext: str) -> tuple[str, str] | None:
        """(old, new) when this Stripe secret would replace one of the other mode (test and live)."""
        if vendor != "stripe" or (new := stripe_mode(plaintext)) is None:
            return None
        sealed = self._ledger.get_secret(vendor, name)
        if sealed is None:
            return None
        try:
            old = stripe_mode(self.open(sealed))
        except MasterKeyError:
            return None  # the old secret is unreadable anyway; replacing it is the fix
        return (old, new) if old is not None and old != new else None

    def delete(self, vendor: str, name: str, *, force: bool = False) -> tuple[bool, list[KeyRecord]]:
        return self._ledger.delete_secret(vendor, name, force=force)

    def keys_using(self, vendor: str, name: str) -> list[KeyRecord]:
        return self._ledger.keys_using_secret(vendor, name)

    def open(self, sealed: SealedSecret) -> str:
        return unseal(self._master_key, sealed.vendor, sealed.name, Sealed(sealed.nonce, sealed.ciphertext))

    def list(self) -> list[SecretInfo]:
        return self._ledger.list_secrets()
