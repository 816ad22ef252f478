"""Admin tokens for the vault API: shown once, stored as SHA-256 hashes, compared in constant time."""

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from ..ledger.store import SqlLedger

TOKEN_PREFIX = "kba_"


@dataclass(frozen=True)
class AdminToken:
    token_id: str
    name: str | None
    created_at: datetime
    revoked_at: datetime | None


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class AdminTokens:
    def __init__(self, ledger: SqlLedger) -> None:
        self._ledger = ledger

    def create(self, name: str | None = None) -> tuple[AdminToken, str]:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_id = "kbt_" + secrets.token_hex(6)
        created_at = self._ledger.create_admin_token(token_id, name, _hash(token))
        return AdminToken(token_id, name, created_at, None), token

    def list(self) -> list[AdminToken]:
        return [AdminToken(r["token_id"], r["name"], r["created_at"], r["revoked_at"])
                for r in self._ledger.list_admin_tokens()]

    def revoke(self, token_id: str) -> bool:
        return self._ledger.revoke_admin_token(token_id)

    def verify(self, presented: str) -> str | None:
        """The token_id of a valid, unrevoked token, or None.

        Every active hash is compared, each in constant time, so the answer's timing says
        nothing about how close a guess was.
        """
        wanted = _hash(presented)
        found = None
        for token_id, token_hash in self._ledger.active_admin_token_hashes():
            if hmac.compare_digest(token_hash, wanted):
                found = token_id
        return found
