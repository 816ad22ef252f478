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
from ..vault.scopes import InvalidScope, Issuer, Scope, read_scope, scope_text

TOKEN_PREFIX = "kba_"
WORKER_TOKEN_PREFIX = "kbw_"


@dataclass(frozen=True)
class IssuedToken:
    token_id: str
    name: str | None
    created_at: datetime
    revoked_at: datetime | None
    scope: Scope | None = None  # an admin token's ceilings; None: unrestricted (worker tokens: always)
    scope_problem: str | None = None  # the stored scope is unreadable, so the token mints nothing


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
        token, token_id = self._new()
        created_at = self._create(token_id, name, token_hash(token))
        return IssuedToken(token_id, name, created_at, None), token

    def _new(self) -> tuple[str, str]:
        """A new token and its id."""
        return self.prefix + secrets.token_urlsafe(32), self.id_prefix + secrets.token_hex(6)

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

    def create(self, name: str | None = None, scope: Scope | None = None) -> tuple[IssuedToken, str]:
        """A token; with `scope`, one that mints only inside those ceilings (vault/scopes.py)."""
        token, token_id = self._new()
        created_at = self._ledger.create_admin_token(token_id, name, token_hash(token), scope_text(scope))
        return IssuedToken(token_id, name, created_at, None, scope), token

    def list(self) -> list[IssuedToken]:
        listed = []
        for row in self._list():
            scope, problem = _scope_of(row["scope"])
            listed.append(IssuedToken(row["token_id"], row["name"], row["created_at"], row["revoked_at"],
                                      scope, problem))
        return listed

    def _list(self) -> list[dict]:
        return self._ledger.list_admin_tokens()

    def authenticate(self, presented: str) -> Issuer | None:
        """The issuer behind a valid, unrevoked token (its id and scope), or None.

        Every active hash is compared, each in constant time, so the answer's timing says
        nothing about how close a guess was. The scope is read on every request: there is no
        cache to outlive a revocation.
        """
        wanted = token_hash(presented)
        found = None
        for token_id, stored_hash, stored_scope in self._ledger.active_admin_tokens():
            if hmac.compare_digest(stored_hash, wanted):
                found = token_id, stored_scope
        if found is None:
            return None
        scope, problem = _scope_of(found[1])
        return Issuer(found[0], scope, problem)

    def revoke(self, token_id: str) -> bool:
        return self._ledger.revoke_admin_token(token_id)

    def verify(self, presented: str) -> str | None:
        """The token_id of a valid, unrevoked token, or None."""
        issuer = self.authenticate(presented)
        return issuer.token_id if issuer is not None else None


def _scope_of(stored: str | None) -> tuple[Scope | None, str | None]:
    """A stored scope, or an empty one with the reason it is unreadable (never unrestricted)."""
    try:
        return read_scope(stored), None
    except InvalidScope as failure:
        return Scope(), str(failure)


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
