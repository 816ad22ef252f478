"""What a signed-in admin token may see: the one place the dashboard decides it.

Every read and every revocation of the dashboard goes through the `ReadScope` this returns for
the session's admin token. Today every admin token is unrestricted, so this returns "everything".
Scoped admin tokens plug in here: return a ReadScope with label prefixes and/or vendors, and
every page, chart, export and Revoke button narrows to them.
"""

from ...ledger.dashboard_reads import ReadScope


def visibility_of_tokens(ledger):
    """The rule of the mounted dashboard: an unrestricted admin token sees everything; a scoped
    one (or one whose scope cannot be read, or is gone) sees only the keys it minted, as in the
    vault API. Read at every request: nothing outlives a revocation or a new token."""

    def visible(token_id: str) -> ReadScope:
        for known_id, _hash, stored_scope in ledger.active_admin_tokens():
            if known_id == token_id and stored_scope is None:
                return ReadScope.everything()
        return ReadScope(minted_by=token_id)

    return visible


def everything_visible(token_id: str) -> ReadScope:
    """Today's rule: an admin token sees every key and every audit row."""
    return ReadScope.everything()
