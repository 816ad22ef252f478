"""The vault HTTP API: issue, find and revoke vault keys; read audit and spend.

Transport-free: it takes an ApiRequest and returns an ApiResponse, so the proxy's listener
and the tests drive the same code. Database work runs through `run_in_db` (the gate's thread).
"""

import asyncio
import hashlib
import json
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..installation import Installation
from ..ledger.base import AuditFilter, IdempotencyMismatch, IssuanceIdempotency, LedgerUnavailable
from ..ledger.times import utc_now
from ..durations import parse_since
from ..vault.issuance import IssueError, issue_key
from ..views import audit_document, key_document, spend_document
from .key_requests import InvalidField, key_request_from_json
from .openapi import OPENAPI
from .tokens import AdminTokens

MAX_BODY_BYTES = 64 * 1024
FAILURES_BEFORE_SLOWDOWN = 5
FAILURE_WINDOW_S = 60.0
MAX_FAILURE_DELAY_S = 5.0

RunInDb = Callable[..., Awaitable]


@dataclass(frozen=True)
class ApiRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    client_ip: str


@dataclass(frozen=True)
class ApiResponse:
    status: int
    document: dict | list
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> bytes:
        return json.dumps(self.document).encode()


def error(status: int, code: str, message: str, field_name: str | None = None, **headers: str) -> ApiResponse:
    body = {"code": code, "message": message}
    if field_name is not None:
        body["field"] = field_name
    return ApiResponse(status, {"error": body}, {k.replace("_", "-"): v for k, v in headers.items()})


class FailureThrottle:
    """Slows down an address after repeated authentication failures (per-process memory)."""

    def __init__(self) -> None:
        self._failures: dict[str, deque[float]] = defaultdict(deque)

    def record(self, address: str) -> float:
        """Record a failure; returns how long to hold the answer back."""
        now = time.monotonic()
        recent = self._failures[address]
        recent.append(now)
        while recent and now - recent[0] > FAILURE_WINDOW_S:
            recent.popleft()
        excess = len(recent) - FAILURES_BEFORE_SLOWDOWN
        return 0.0 if excess < 0 else min(MAX_FAILURE_DELAY_S, 0.1 * 2 ** excess)


class VaultApi:
    def __init__(self, installation: Installation, run_in_db: RunInDb) -> None:
        self._installation = installation
        self._ledger = installation.ledger
        self._tokens = AdminTokens(installation.ledger)
        self._run_in_db = run_in_db
        self._throttle = FailureThrottle()
        from .alerts import AlertsApi  # here, not at the top: api/alerts.py uses this module's ApiResponse

        self._alerts = AlertsApi(installation, run_in_db)

    async def handle(self, request: ApiRequest) -> ApiResponse:
        if request.method == "GET" and request.path == "/vault/openapi.json":
            return ApiResponse(200, OPENAPI)
        try:
            denied = await self._authenticate(request)
            if denied is not None:
                return denied
            if len(request.body) > MAX_BODY_BYTES:
                return error(413, "body_too_large", f"the body is over {MAX_BODY_BYTES} bytes")
            return await self._route(request)
        except LedgerUnavailable as failure:
            return error(503, "unavailable", f"the vault is unavailable: {failure}", retry_after="2")

    async def _authenticate(self, request: ApiRequest) -> ApiResponse | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            if await self._run_in_db(self._tokens.verify, token.strip()) is not None:
                return None
        await asyncio.sleep(self._throttle.record(request.client_ip))
        return error(401, "unauthorized",
                     "send an admin token as `Authorization: Bearer kba_...` (create one with "
                     "`keybrake admin-token create`)", www_authenticate="Bearer")

    async def _route(self, request: ApiRequest) -> ApiResponse:
        parts = request.path.rstrip("/").split("/")[1:]  # ["vault", "keys", id?]
        method = request.method
        if parts == ["vault", "keys"]:
            if method == "POST":
                return await self._issue(request)
            if method == "GET":
                return await self._list_keys(request)
            if method == "DELETE":
                return await self._revoke_label(request)
        elif len(parts) == 3 and parts[:2] == ["vault", "keys"]:
            if method == "GET":
                return await self._show_key(parts[2])
            if method == "DELETE":
                return await self._revoke_key(parts[2])
        elif parts == ["vault", "audit"] and method == "GET":
            return await self._audit(request)
        elif parts == ["vault", "spend"] and method == "GET":
            return await self._spend(request)
        elif parts[:2] == ["vault", "alerts"]:
            return await self._alerts.handle(request, parts[2:])
        else:
            return error(404, "not_found", f"no such endpoint: {request.path}")
        return error(405, "method_not_allowed", f"{method} is not allowed on {request.path}")

    async def _issue(self, request: ApiRequest) -> ApiResponse:
        try:
            document = json.loads(request.body or b"null")
        except (ValueError, UnicodeDecodeError) as failure:
            return error(400, "invalid_json", f"the body is not valid JSON: {failure}")
        try:
            key_request = key_request_from_json(document)
        except InvalidField as failure:
            return error(400, "invalid_field", str(failure), failure.field)
        idempotency = None
        if idempotency_key := request.headers.get("idempotency-key"):
            fingerprint = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
            idempotency = IssuanceIdempotency(idempotency_key, fingerprint)
        installation = self._installation
        try:
            issued = await self._run_in_db(lambda: issue_key(installation.ledger, installation.master_key,
                                                             key_request, idempotency=idempotency))
        except IssueError as failure:
            return error(400, "invalid_field", str(failure), failure.field)
        except IdempotencyMismatch:
            return error(409, "idempotency_mismatch",
                         "this Idempotency-Key was used with a different request in the last 24 hours")
        headers = {} if issued.created else {"idempotent-replayed": "true"}
        return ApiResponse(201 if issued.created else 200,
                           {"vault_key": issued.vault_key, **key_document(issued.record)}, headers)

    async def _list_keys(self, request: ApiRequest) -> ApiResponse:
        active = _flag(request.query.get("active"))
        if isinstance(active, ApiResponse):
            return active
        records = await self._run_in_db(self._ledger.list_keys, request.query.get("label"),
                                         utc_now() if active else None)
        return ApiResponse(200, {"data": [key_document(r) for r in records]})

    async def _show_key(self, key_id: str) -> ApiResponse:
        record = await self._run_in_db(self._ledger.get_key, key_id)
        if record is None:
            return error(404, "not_found", f"no vault key {key_id}")
        return ApiResponse(200, key_document(record))

    async def _revoke_key(self, key_id: str) -> ApiResponse:
        if not await self._run_in_db(self._ledger.revoke_key, key_id):
            return error(404, "not_found", f"no vault key {key_id}")
        return ApiResponse(200, {"revoked": [key_id]})

    async def _revoke_label(self, request: ApiRequest) -> ApiResponse:
        label = request.query.get("label")
        if not label:
            return error(400, "invalid_field", "give ?label=... to revoke every key of one run", "label")
        return ApiResponse(200, {"revoked": await self._run_in_db(self._ledger.revoke_label, label)})

    async def _audit(self, request: ApiRequest) -> ApiResponse:
        where = _audit_filter(request.query)
        if isinstance(where, ApiResponse):
            return where
        rows = await self._run_in_db(self._ledger.audit_rows, where)
        return ApiResponse(200, {"data": [audit_document(row) for row in rows]})

    async def _spend(self, request: ApiRequest) -> ApiResponse:
        by = request.query.get("by", "label")
        if by not in ("key", "label", "vendor", "day"):
            return error(400, "invalid_field", "by is one of key, label, vendor, day", "by")
        where = _audit_filter(request.query)
        if isinstance(where, ApiResponse):
            return where
        rows = await self._run_in_db(self._ledger.spend, by, where)
        return ApiResponse(200, {"data": [spend_document(row) for row in rows]})


def _flag(value: str | None) -> bool | ApiResponse:
    if value is None or value.lower() in ("false", "0"):
        return False
    if value.lower() in ("true", "1"):
        return True
    return error(400, "invalid_field", "active is true or false", "active")


def _audit_filter(query: dict[str, str]) -> AuditFilter | ApiResponse:
    since = None
    if raw := query.get("since"):
        try:
            since = parse_since(raw)
        except ValueError as failure:
            return error(400, "invalid_field", str(failure), "since")
    limit = None
    if raw := query.get("limit"):
        if not raw.isdigit() or int(raw) == 0:
            return error(400, "invalid_field", "limit is a whole number above 0", "limit")
        limit = int(raw)
    return AuditFilter(label=query.get("label"), key_id=query.get("key"), since=since, limit=limit)
