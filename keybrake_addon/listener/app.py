"""The API listener's own surface as one Starlette application (see the package docstring).

`build_listener_app(services, metrics_page, extra_routes=...)`: `extra_routes` is where the
dashboard joins, e.g. `[Mount("/ui", app=dashboard)]`; they are matched after the routes below,
and every path nothing matches gets the listener's JSON 404.
"""

from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from ..health import HEALTH_PATHS, health_answer
from ..vendors import VENDORS
from .metrics_page import METRICS_PATH, MetricsPage, metrics_endpoint
from .responses import from_rendered, json_error
from .services import ListenerServices
from .vault_routes import VaultRoutes

ROUTES_HINT = ", ".join(["/vault/...", *(f"/{name}/..." for name in VENDORS), "/v1/... (Stripe)", METRICS_PATH,
                         *HEALTH_PATHS])
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


class HealthRoute:
    """Every method reaches health_answer, which answers 405 itself to all but GET and HEAD."""

    def __init__(self, services: ListenerServices) -> None:
        self._ready = services.is_ready

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = await health_answer(scope["method"].upper(), scope["path"], self._ready)
        await from_rendered(answer)(scope, receive, send)


def build_listener_app(services: ListenerServices, metrics_page: MetricsPage,
                       extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    health, vault = HealthRoute(services), VaultRoutes(services)
    routes = [
        *(Route(path, health) for path in HEALTH_PATHS),
        Route(METRICS_PATH, metrics_endpoint(metrics_page, services), methods=["GET"]),
        Route("/vault", vault),
        Route("/vault/{rest:path}", vault),
        *extra_routes,
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error, Exception: _server_error})
    app.router.redirect_slashes = False  # "/healthz/" is not "/healthz": no redirect to guess it
    return app


async def _http_error(request: Request, failure: HTTPException) -> Response:
    if failure.status_code == 404:
        message = f"no route for {request.url.path}: use {ROUTES_HINT}"
    else:
        message = f"{request.method} is not allowed on {request.url.path}" if failure.status_code == 405 \
            else str(failure.detail)
    return json_error(failure.status_code, _HTTP_CODES.get(failure.status_code, "error"), message,
                      {k.lower(): v for k, v in (failure.headers or {}).items()})


async def _server_error(request: Request, failure: Exception) -> Response:
    # Never the exception's text: it could quote a header or a secret. The bridge logs where it failed.
    return json_error(500, "internal_error", "Keybrake hit an unexpected error; the proxy log says more.")
