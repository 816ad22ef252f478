"""The dashboard's sign-in sessions, in the ledger so every replica sees the same ones.

A session row holds the SHA-256 of the cookie's secret (never the secret) and the admin token
that signed in. A session is live while it has not expired, has not been ended (sign-out deletes
its row) and its admin token is not revoked: the lookup joins the token, so revoking a token
ends its sessions on every replica at once.
"""

from datetime import datetime, timedelta

from .store import SqlLedger
from .times import to_text


class DashboardSessions:
    def __init__(self, ledger: SqlLedger) -> None:
        self._database = ledger.database

    def start(self, session_hash: str, token_id: str, lifetime: timedelta) -> datetime:
        """Record a new session; returns when it expires. Expired sessions are swept here."""
        with self._database.transaction() as tx:
            now = tx.now()
            tx.run("DELETE FROM dashboard_sessions WHERE expires_at <= ?", (to_text(now),))
            expires = now + lifetime
            tx.run("INSERT INTO dashboard_sessions (session_hash, token_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
                   (session_hash, token_id, to_text(now), to_text(expires)))
            return expires

    def token_of(self, session_hash: str) -> str | None:
        """The admin token a live session signed in with, or None."""
        with self._database.reading() as tx:
            row = tx.row(
                "SELECT s.token_id FROM dashboard_sessions s JOIN admin_tokens t ON t.token_id = s.token_id "
                "WHERE s.session_hash = ? AND s.expires_at > ? AND t.revoked_at IS NULL",
                (session_hash, to_text(tx.now())))
        return row["token_id"] if row else None

    def end(self, session_hash: str) -> bool:
        with self._database.transaction() as tx:
            return tx.run("DELETE FROM dashboard_sessions WHERE session_hash = ?", (session_hash,)) > 0
