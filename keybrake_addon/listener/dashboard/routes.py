"""The dashboard's routes under /ui, ready to mount in the API listener's Starlette app.

    routes = dashboard_routes(installation.ledger, run_in_db=gate.run_in_db)
    app = Starlette(routes=[*api_routes, *routes])

Every page needs a session (else it redirects to the sign-in page; a live fragment answers 401
so the page's script can do the same). Every POST reads a bounded form, checks its Origin and its
CSRF token before doing anything. A ledger that cannot answer gives a 503 page that says so.
"""

from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import quote, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...api.tokens import AdminTokens
from ...ledger.base import LedgerUnavailable
from ...ledger.dashboard_reads import DashboardReads, ReadScope
from ...ledger.dashboard_sessions import DashboardSessions
from ...ledger.store import SqlLedger
from .auth import FormTooLarge, Sessions, Viewer, csrf_matches, read_form, same_origin
from .budget_pages import BudgetPages
from .pages import BASE, Pages
from .rendering import Renderer
from .visibility import everything_visible

STATIC = Path(__file__).parent / "static"
# Scripts and styles from this package only; no inline script, no other origin, no framing.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]

PageHandler = Callable[[Request, Viewer], Awaitable[Response]]
FormHandler = Callable[[Request, Viewer, dict[str, str]], Awaitable[Response]]


def dashboard_routes(ledger: SqlLedger, *, run_in_db: Callable[..., Awaitable] | None = None,
                     admin_tokens: AdminTokens | None = None,
                     visibility: Callable[[str], ReadScope] = everything_visible,
                     secure_cookies: bool | None = None, refresh_seconds: float = 10) -> list[BaseRoute]:
    """The /ui routes.

    run_in_db(fn, *args): runs blocking ledger work off the event loop (default: a thread).
    admin_tokens: what verifies a token at sign-in (default: the ledger's admin tokens).
    visibility(token_id): what that admin token may see; called on the database's thread.
    secure_cookies: force the cookies' Secure flag on or off (default: on when the page came over TLS).
    refresh_seconds: how often an open page polls for fresh figures.
    """
    return Dashboard(ledger, run_in_db=run_in_db or run_in_threadpool, admin_tokens=admin_tokens or AdminTokens(ledger),
                     visibility=visibility, secure_cookies=secure_cookies, refresh_seconds=refresh_seconds).routes()


class SecurityHeaders:
    """Adds the dashboard's security headers to every answer under /ui, static files included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (name, value) for name, value in SECURITY_HEADERS if name not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Dashboard:
    def __init__(self, ledger: SqlLedger, *, run_in_db, admin_tokens: AdminTokens,
                 visibility: Callable[[str], ReadScope], secure_cookies: bool | None, refresh_seconds: float) -> None:
        self._db = run_in_db
        self._render = Renderer(BASE, refresh_ms=int(refresh_seconds * 1000))
        self._sessions = Sessions(DashboardSessions(ledger), admin_tokens.verify, visibility, run_in_db,
                                  secure_cookies)
        reads = DashboardReads(ledger)
        self._pages = Pages(ledger, reads, self._render, run_in_db)
        self._budgets = BudgetPages(ledger, reads, self._render, run_in_db)

    def routes(self) -> list[BaseRoute]:
        pages, budgets = self._pages, self._budgets
        inner = [
            Route("/", self._signed_in(pages.overview)),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self._form(self.logout), methods=["POST"]),
            Route("/runs", self._signed_in(pages.runs)),
            Route("/run", self._signed_in(pages.run)),
            Route("/run/revoke", self._form(pages.revoke_run), methods=["POST"]),
            Route("/keys/{key_id}", self._signed_in(pages.key)),
            Route("/keys/{key_id}/revoke", self._form(pages.revoke_key), methods=["POST"]),
            Route("/budgets", self._signed_in(budgets.budgets)),
            Route("/budgets/{name}/freeze", self._form(budgets.freeze), methods=["POST"]),
            Route("/budgets/{name}/unfreeze", self._form(budgets.unfreeze), methods=["POST"]),
            Route("/audit", self._signed_in(pages.audit)),
            Route("/audit.csv", self._signed_in(pages.audit_csv)),
            Mount("/static", StaticFiles(directory=STATIC), name="dashboard-static"),
        ]
        return [Route(BASE, lambda request: RedirectResponse(f"{BASE}/", status_code=307)),
                Mount(BASE, routes=inner, middleware=[Middleware(SecurityHeaders)])]

    # --- guards -------------------------------------------------------------------------------

    def _signed_in(self, handler: PageHandler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                viewer = await self._sessions.viewer(request)
                if viewer is None:
                    return self._to_sign_in(request)
                return await handler(request, viewer)
            except LedgerUnavailable:
                return self._unavailable(request)
        return endpoint

    def _form(self, handler: FormHandler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                viewer = await self._sessions.viewer(request)
                if viewer is None:
                    return self._to_sign_in(request)
                if not same_origin(request):
                    return self._refused(request, viewer, "This form came from another site, so it was refused.")
                try:
                    form = await read_form(request)
                except FormTooLarge:
                    return PlainTextResponse("the form is too large", status_code=413)
                if not csrf_matches(viewer, form):
                    return self._refused(request, viewer, "This form has expired or did not come from this "
                                                          "dashboard. Reload the page and try again.")
                return await handler(request, viewer, form)
            except LedgerUnavailable:
                return self._unavailable(request)
        return endpoint

    def _to_sign_in(self, request: Request) -> Response:
        if request.query_params.get("fragment") == "live":
            return PlainTextResponse("sign in again", status_code=401)
        wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{BASE}/login?" + urlencode({"next": wanted}), status_code=303)

    def _refused(self, request: Request, viewer: Viewer, message: str) -> Response:
        return self._render.response(request, "refused.html", {"message": message}, viewer, status=403)

    def _unavailable(self, request: Request) -> Response:
        return self._render.response(request, "unavailable.html", {}, None, status=503)

    # --- signing in and out -------------------------------------------------------------------

    async def login_form(self, request: Request, *, error: str | None = None, status: int = 200) -> Response:
        if error is None and await self._viewer_or_none(request) is not None:
            return RedirectResponse(_safe_next(request.query_params.get("next")), status_code=303)
        token, fresh = self._sessions.login_form_token(request)
        notice = {"signed_out": "You are signed out.",
                  "expired": "Your session ended. Sign in again."}.get(request.query_params.get("notice", ""))
        response = self._render.response(request, "login.html", {
            "login_csrf": token, "error": error, "notice": notice,
            "next": _safe_next(request.query_params.get("next"))}, None, status=status)
        if fresh:
            self._sessions.set_login_cookie(request, response, token)
        return response

    async def login(self, request: Request) -> Response:
        try:
            form = await read_form(request)
        except FormTooLarge:
            return PlainTextResponse("the form is too large", status_code=413)
        if not same_origin(request) or not self._sessions.login_form_matches(request, form):
            return await self.login_form(request, error="The sign-in form expired. Try again.", status=403)
        try:
            secret = await self._sessions.sign_in(request, form.get("token", ""))
        except LedgerUnavailable:
            return self._unavailable(request)
        if secret is None:
            return await self.login_form(request, error="That is not an active admin token.", status=401)
        response = RedirectResponse(_safe_next(form.get("next")), status_code=303)
        self._sessions.set_session_cookie(request, response, secret)
        self._sessions.clear_login_cookie(request, response)
        return response

    async def logout(self, request: Request, viewer: Viewer, form: dict[str, str]) -> Response:
        await self._sessions.sign_out(viewer)
        response = RedirectResponse(f"{BASE}/login?notice=signed_out", status_code=303)
        self._sessions.clear_session_cookie(request, response)
        return response

    async def _viewer_or_none(self, request: Request) -> Viewer | None:
        try:
            return await self._sessions.viewer(request)
        except LedgerUnavailable:
            return None


def _safe_next(wanted: str | None) -> str:
    """Where to go after signing in: a dashboard page only (never another site)."""
    if wanted and wanted.startswith(f"{BASE}/") and not wanted.startswith("//") and "\\" not in wanted \
            and not wanted.startswith(f"{BASE}/login") and len(wanted) < 2048:
        return quote(wanted, safe="/?=&%:@+,;~-._")
    return f"{BASE}/"

