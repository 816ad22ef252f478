"""Storing and opening real vendor secrets. Plaintext exists only inside these calls."""

from ..ledger.base import Ledger, SealedSecret, SecretInfo
from .crypto import Sealed, fingerprint, seal, unseal


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

    def open(self, sealed: SealedSecret) -> str:
        return unseal(self._master_key, sealed.vendor, sealed.name, Sealed(sealed.nonce, sealed.ciphertext))

    def list(self) -> list[SecretInfo]:
        return self._ledger.list_secrets()
