"""Signing in to the dashboard: an admin token once, then a session cookie.

- The cookie holds 256 random bits; the ledger keeps only their SHA-256, beside the admin token
  that signed in (`ledger/dashboard_sessions.py`). Every replica reads the same sessions, so a
  sign-out, or revoking the admin token, ends the session everywhere at once.
- The cookie is HttpOnly, SameSite=Strict, limited to /ui, and Secure when the page came over
  TLS. It expires with the session (12 hours).
- Each form that changes something carries a CSRF token: an HMAC of the session's secret, so it
  needs no storage and is worthless without the cookie. The sign-in form, made before any
  session exists, pairs a hidden field with a short-lived cookie (double submit).
- What a stranger sends is bounded before anything is looked up: the cookie's shape is checked
  before the ledger is asked, a form body is read up to 8 KiB, and repeated failed sign-ins from
  one address are slowed down.
"""

import asyncio
import hashlib
import hmac
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from ...api.vault_api import FailureThrottle  # one throttle for every sign-in: the vault API's
from ...ledger.dashboard_reads import ReadScope
from ...ledger.dashboard_sessions import DashboardSessions

SESSION_COOKIE = "keybrake_session"
LOGIN_COOKIE = "keybrake_signin"
COOKIE_PATH = "/ui"
SESSION_LIFETIME = timedelta(hours=12)
LOGIN_FORM_LIFETIME_S = 3600
MAX_FORM_BYTES = 8 * 1024
MAX_TOKEN_CHARS = 256
_SECRET_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)

RunInDb = Callable[..., Awaitable]


@dataclass(frozen=True)
class Viewer:
    """Who is signed in: their admin token, what it may see, and their forms' CSRF token."""

    token_id: str
    scope: ReadScope
    csrf: str
    session_hash: str


class FormTooLarge(Exception):
    pass


async def read_form(request: Request) -> dict[str, str]:
    """A url-encoded form, read up to MAX_FORM_BYTES (one value per name: the first)."""
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > MAX_FORM_BYTES:
        raise FormTooLarge()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormTooLarge()
    form: dict[str, str] = {}
    for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        form.setdefault(name, value)
    return form


def csrf_token(session_secret: str) -> str:
    return hmac.new(session_secret.encode(), b"keybrake-dashboard-csrf", hashlib.sha256).hexdigest()


def _hash(session_secret: str) -> str:
    return hashlib.sha256(session_secret.encode()).hexdigest()


class Sessions:
    def __init__(self, sessions: DashboardSessions, verify_token: Callable[[str], str | None],
                 visibility: Callable[[str], ReadScope], run_in_db: RunInDb, secure_cookies: bool | None) -> None:
        self._sessions = sessions
        self._verify_token = verify_token
        self._visibility = visibility
        self._run_in_db = run_in_db
        self._secure_cookies = secure_cookies
        self._throttle = FailureThrottle()

    # --- who is signed in ---------------------------------------------------------------------

    async def viewer(self, request: Request) -> Viewer | None:
        secret = request.cookies.get(SESSION_COOKIE, "")
        if not _SECRET_SHAPE.fullmatch(secret):
            return None  # not one of ours: the ledger is not asked
        session_hash = _hash(secret)

        def lookup() -> tuple[str, ReadScope] | None:
            token_id = self._sessions.token_of(session_hash)
            return None if token_id is None else (token_id, self._visibility(token_id))

        found = await self._run_in_db(lookup)
        if found is None:
            return None
        return Viewer(found[0], found[1], csrf_token(secret), session_hash)

    # --- signing in and out -------------------------------------------------------------------

    def login_form_token(self, request: Request) -> tuple[str, bool]:
        """The sign-in form's CSRF value, and whether its cookie must be (re)set."""
        current = request.cookies.get(LOGIN_COOKIE, "")
        if _SECRET_SHAPE.fullmatch(current):
            return current, False
        return secrets.token_urlsafe(32), True

    def login_form_matches(self, request: Request, form: dict[str, str]) -> bool:
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        sent = form.get("csrf", "")
        return bool(_SECRET_SHAPE.fullmatch(cookie)) and hmac.compare_digest(cookie, sent)

    async def sign_in(self, request: Request, token: str) -> str | None:
        """A new session's cookie secret for a valid admin token; None (after a delay when an
        address keeps failing) for anything else."""
        token = token.strip()
        token_id = None
        if 0 < len(token) <= MAX_TOKEN_CHARS:
            token_id = await self._run_in_db(self._verify_token, token)
        if token_id is None:
            await asyncio.sleep(self._throttle.record(_address(request)))
            return None
        secret = secrets.token_urlsafe(32)
        await self._run_in_db(self._sessions.start, _hash(secret), token_id, SESSION_LIFETIME)
        return secret

    async def sign_out(self, viewer: Viewer) -> None:
        await self._run_in_db(self._sessions.end, viewer.session_hash)

    # --- cookies ------------------------------------------------------------------------------

    def secure(self, request: Request) -> bool:
        return self._secure_cookies if self._secure_cookies is not None else request.url.scheme == "https"

    def set_session_cookie(self, request: Request, response: Response, secret: str) -> None:
        response.set_cookie(SESSION_COOKIE, secret, max_age=int(SESSION_LIFETIME.total_seconds()), path=COOKIE_PATH,
                            httponly=True, samesite="strict", secure=self.secure(request))

    def clear_session_cookie(self, request: Request, response: Response) -> None:
        response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict",
                               secure=self.secure(request))

    def set_login_cookie(self, request: Request, response: Response, value: str) -> None:
        response.set_cookie(LOGIN_COOKIE, value, max_age=LOGIN_FORM_LIFETIME_S, path=COOKIE_PATH, httponly=True,
                            samesite="strict", secure=self.secure(request))

    def clear_login_cookie(self, request: Request, response: Response) -> None:
        response.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict",
                               secure=self.secure(request))


def csrf_matches(viewer: Viewer, form: dict[str, str]) -> bool:
    return hmac.compare_digest(viewer.csrf, form.get("csrf", ""))


def same_origin(request: Request) -> bool:
    """A browser names the site a form came from; another site's (or "null", a sandboxed or
    opaque one) is refused. No Origin header at all (an older client): the CSRF token decides."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"
