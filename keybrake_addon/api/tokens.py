"""Tokens Keybrake hands out itself: shown once, stored as SHA-256 hashes.

Admin tokens (`kba_`) open the vault API; worker tokens (`kbw_`) open the forward proxy. Both
kinds have the same life (create, list, revoke) and differ only in their prefix and table.
"""

from __future__ import annotations  # a method named `list` shadows the builtin in annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from ..ledger.store import SqlLedger

TOKEN_PREFIX = "kba_"
WORKER_TOKEN_PREFIX = "kbw_"


@dataclass(frozen=True)
class IssuedToken:
    token_id: str
    name: str | None
    created_at: datetime
    revoked_at: datetime | None


AdminToken = IssuedToken  # the name callers of the admin kind know


def token_hash(token: str) -> str:
    # A token carries 256 random bits, so a fast hash is enough to make the stored value useless.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class _Tokens:
    """One kind of token: what differs between kinds is the prefix and the ledger's methods."""

    prefix: str
    id_prefix: str

    def __init__(self, ledger: SqlLedger) -> None:
        self._ledger = ledger

    def create(self, name: str | None = None) -> tuple[IssuedToken, str]:
        token = self.prefix + secrets.token_urlsafe(32)
        token_id = self.id_prefix + secrets.token_hex(6)
        created_at = self._create(token_id, name, token_hash(token))
        return IssuedToken(token_id, name, created_at, None), token

    def list(self) -> list[IssuedToken]:
        return [IssuedToken(r["token_id"], r["name"], r["created_at"], r["revoked_at"]) for r in self._list()]

    def _create(self, token_id: str, name: str | None, hashed: str) -> datetime:
        raise NotImplementedError

    def _list(self) -> list[dict]:
        raise NotImplementedError

    def revoke(self, token_id: str) -> bool:
        raise NotImplementedError


class AdminTokens(_Tokens):
    prefix, id_prefix = TOKEN_PREFIX, "kbt_"

    def _create(self, token_id: str, name: str | None, hashed: str) -> datetime:
        return self._ledger.create_admin_token(token_id, name, hashed)

    def _list(self) -> list[dict]:
        return self._ledger.list_admin_tokens()

    def revoke(self, token_id: str) -> bool:
        return self._ledger.revoke_admin_token(token_id)

    def verify(self, presented: str) -> str | None:
        """The token_id of a valid, unrevoked token, or None.

        Every active hash is compared, each in constant time, so the answer's timing says
        nothing about how close a guess was.
        """
        wanted = token_hash(presented)
        found = None
        for token_id, stored_hash in self._ledger.active_admin_token_hashes():
            if hmac.compare_digest(stored_hash, wanted):
                found = token_id
        return found


class WorkerTokens(_Tokens):
    """Forward-proxy credentials. Checked by `SqlLedger.proxy_credential_active` (by hash, like a
    vault key), so there is no verify here."""

    prefix, id_prefix = WORKER_TOKEN_PREFIX, "kbwt_"

    def _create(self, token_id: str, name: str | None, hashed: str) -> datetime:
        return self._ledger.create_worker_token(token_id, name, hashed)

    def _list(self) -> list[dict]:
        return self._ledger.list_worker_tokens()

    def revoke(self, token_id: str) -> bool:
        return self._ledger.revoke_worker_token(token_id)
