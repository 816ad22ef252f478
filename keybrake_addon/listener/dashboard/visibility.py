"""What a signed-in admin token may see: the one place the dashboard decides it.

Every read and every revocation of the dashboard goes through the `ReadScope` this returns for
the session's admin token. Today every admin token is unrestricted, so this returns "everything".
Scoped admin tokens plug in here: return a ReadScope with label prefixes and/or vendors, and
every page, chart, export and Revoke button narrows to them.
"""

from ...ledger.dashboard_reads import ReadScope


def everything_visible(token_id: str) -> ReadScope:
    """Today's rule: an admin token sees every key and every audit row."""
    return ReadScope.everything()
