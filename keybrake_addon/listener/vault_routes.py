"""/vault and /vault/...: a thin adapter from Starlette to VaultApi.handle (ApiRequest -> ApiResponse).

VaultApi keeps its own routing, authentication and validation. This adapter adds what belongs
to the transport:
- 405 with an Allow header for a method the OpenAPI description does not declare on a path it
  does declare (the description is the one source: a route added there is covered at once);
- 415 for a compressed body: decompressing before authentication would let a stranger turn
  64 KiB on the wire into far more in memory;
- 503 while the ledger cannot be opened.
"""

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..api.validation import DESCRIPTION
from ..api.vault_api import ApiRequest
from ..health import NOT_READY_RETRY_AFTER_S
from .responses import json_error
from .services import ListenerServices

# Served by VaultApi itself, outside the paths the description lists.
UNDESCRIBED_ROUTES = {"/vault/openapi.json": frozenset({"GET"})}
IDENTITY_ENCODINGS = ("", "identity")


class VaultRoutes:
    """An ASGI app: every method on /vault and /vault/... (a Starlette Route with no method list)."""

    def __init__(self, services: ListenerServices) -> None:
        self._services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self._answer(Request(scope, receive))
        await response(scope, receive, send)

    @staticmethod
    def allowed_methods(path: str) -> frozenset[str] | None:
        """The declared methods of `path`, or None when no declared route has it."""
        return UNDESCRIBED_ROUTES.get(path.rstrip("/")) or DESCRIPTION.allowed_methods(path)

    async def _answer(self, request: Request) -> Response:
        # scope["path"], never request.url.path: building the URL drops a decoded tab or newline
        # (urlsplit's WHATWG clean-up), and /vault/keys/%09 is not /vault/keys/.
        method, path = request.method.upper(), request.scope["path"]
        allowed = self.allowed_methods(path)
        if allowed is not None and method not in allowed:
            return json_error(405, "method_not_allowed", f"{method} is not allowed on {path}",
                              {"allow": ", ".join(sorted(allowed))})
        if request.headers.get("content-encoding", "").strip().lower() not in IDENTITY_ENCODINGS:
            return json_error(415, "unsupported_encoding", "send the body uncompressed (no Content-Encoding)")
        api = await self._services.vault_api()
        if api is None:
            return json_error(503, "unavailable", self._services.not_ready_reason(),
                              {"retry-after": str(NOT_READY_RETRY_AFTER_S)})
        query: dict[str, str] = {}
        for name, value in request.query_params.multi_items():
            query.setdefault(name, value)  # the first of repeated parameters, as VaultApi always had it
        answer = await api.handle(ApiRequest(
            method=method, path=path, query=query,
            # ASGI header names are lower-case; the last of repeated lines wins, as VaultApi always had it.
            headers={name.decode("latin-1"): value.decode("latin-1") for name, value in request.scope["headers"]},
            body=await request.body(), client_ip=request.client.host if request.client else "?"))
        return Response(answer.body(), answer.status, {"content-type": "application/json", **answer.headers})
