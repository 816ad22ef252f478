"""The dashboard on the API listener: mounted once the ledger is open, a 503 until then.

Only an unrestricted admin token signs in. A scoped token sees only the keys it minted, and the
dashboard's pages (overview totals, runs, the audit trail) cover every key: rather than show it
more than it may see, the sign-in refuses it, as a wrong token.
"""

from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Mount

from ..api.tokens import AdminTokens
from .dashboard import dashboard_routes
from .services import LedgerAccess

NOT_READY = "Keybrake cannot open its ledger yet, so the dashboard cannot answer. It retries by itself."


class UnrestrictedAdminTokens:
    """What the dashboard's sign-in verifies: an unrestricted admin token, nothing else."""

    def __init__(self, tokens: AdminTokens) -> None:
        self._tokens = tokens

    def verify(self, presented: str) -> str | None:
        issuer = self._tokens.authenticate(presented)
        return issuer.token_id if issuer is not None and issuer.unrestricted else None


def dashboard_mount(access: LedgerAccess | None, *, tls: bool) -> list[BaseRoute]:
    if access is None:
        return [Mount("/ui", app=PlainTextResponse(NOT_READY, status_code=503, headers={"retry-after": "2"}))]
    return dashboard_routes(access.ledger, run_in_db=access.run_in_db,
                            admin_tokens=UnrestrictedAdminTokens(AdminTokens(access.ledger)),
                            secure_cookies=True if tls else None)
