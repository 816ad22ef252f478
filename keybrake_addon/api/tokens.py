"""Admin tokens for the vault API: shown once, stored as SHA-256 hashes, compared in constant time."""

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from ..ledger.sqlite import SqliteStore
from ..ledger.times import from_text, to_text, utc_now

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
    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def create(self, name: str | None = None) -> tuple[AdminToken, str]:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_id = "kbt_" + secrets.token_hex(6)
        now = utc_now()
        with self._store.transaction() as db:
            db.execute("INSERT INTO admin_tokens (token_id, name, token_hash, created_at) VALUES (?, ?, ?, ?)",
                       (token_id, name, _hash(token), to_text(now)))
        return AdminToken(token_id, name, now, None), token

    def list(self) -> list[AdminToken]:
        return [AdminToken(r["token_id"], r["name"], from_text(r["created_at"]), from_text(r["revoked_at"]))
                for r in self._store.query("SELECT * FROM admin_tokens ORDER BY created_at")]

    def revoke(self, token_id: str) -> bool:
        with self._store.transaction() as db:
            cursor = db.execute("UPDATE admin_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE token_id = ?",
                                (to_text(utc_now()), token_id))
            return cursor.rowcount > 0

    def verify(self, presented: str) -> str | None:
        """The token_id of a valid, unrevoked token, or None.

        Every active hash is compared, each in constant time, so the answer's timing says
        nothing about how close a guess was.
        """
        wanted = _hash(presented)
        found = None
        for row in self._store.query("SELECT token_id, token_hash FROM admin_tokens WHERE revoked_at IS NULL"):
            if hmac.compare_digest(row["token_hash"], wanted):
                found = row["token_id"]
        return found
