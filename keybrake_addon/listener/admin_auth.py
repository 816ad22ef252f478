"""Admin-token checks for the listener's own pages (/metrics now, the dashboard later).

The same tokens as the vault API (`keybrake admin-token create`), checked against the ledger on
every request, so a revoked token stops working at once; repeated failures from one address are
slowed down like the vault API's.
"""

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from ..api.tokens import AdminTokens
from ..api.vault_api import FailureThrottle
from ..health import NOT_READY_RETRY_AFTER_S
from ..ledger.base import LedgerUnavailable
from .responses import json_error
from .services import LedgerAccess

UNAUTHORIZED = ("send an admin token as `Authorization: Bearer kba_...` (create one with "
                "`keybrake admin-token create`)")


class AdminGate:
    def __init__(self) -> None:
        self._throttle = FailureThrottle()

    async def refusal(self, request: Request, access: LedgerAccess | None, not_ready: str) -> Response | None:
        """None when the request carries a valid admin token, else the answer to send instead."""
        if access is None:
            return json_error(503, "unavailable", not_ready, {"retry-after": str(NOT_READY_RETRY_AFTER_S)})
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            try:
                issuer = await access.run_in_db(AdminTokens(access.ledger).authenticate, token.strip())
            except LedgerUnavailable:
                return json_error(503, "unavailable", "the ledger cannot check the token now; retry",
                                  {"retry-after": str(NOT_READY_RETRY_AFTER_S)})
            if issuer is not None and issuer.unrestricted:
                return None
            if issuer is not None:  # the metrics are the whole installation's: more than its own keys
                return json_error(403, "scoped_token", "a scoped admin token sees only its own keys; the metrics "
                                                       "cover every key, so they take an unrestricted token")
        client = request.client.host if request.client else "?"
        await asyncio.sleep(self._throttle.record(client))
        return json_error(401, "unauthorized", UNAUTHORIZED, {"www-authenticate": "Bearer"})
