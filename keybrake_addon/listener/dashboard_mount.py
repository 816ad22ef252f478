"""The dashboard on the API listener: mounted once the ledger is open, a 503 until then.

Any active admin token signs in. A scoped one sees only the keys it minted (every page, chart,
export and Revoke button narrows to them, as the vault API does) and no budgets.
"""

from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Mount

from ..api.tokens import AdminTokens
from .dashboard import dashboard_routes
from .dashboard.visibility import visibility_of_tokens
from .services import LedgerAccess

NOT_READY = "Keybrake cannot open its ledger yet, so the dashboard cannot answer. It retries by itself."


def dashboard_mount(access: LedgerAccess | None, *, tls: bool) -> list[BaseRoute]:
    if access is None:
        return [Mount("/ui", app=PlainTextResponse(NOT_READY, status_code=503, headers={"retry-after": "2"}))]
    return dashboard_routes(access.ledger, run_in_db=access.run_in_db,
                            admin_tokens=AdminTokens(access.ledger),
                            visibility=visibility_of_tokens(access.ledger),
                            secure_cookies=True if tls else None)
