"""The vault HTTP API: issue, find and revoke vault keys; read audit and spend.

Transport-free: it takes an ApiRequest and returns an ApiResponse, so the proxy's listener
and the tests drive the same code. Database work runs through `run_in_db` (the gate's thread).

Once the caller is authenticated, the request is checked against the published description
(validation.py): what does not fit it is a 400 naming the field. A request that fits it but
breaks a rule it cannot state (a stored secret or budget that must exist, a key that needs a
cap) is a 422 naming the field.
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
from ..vault.scopes import Issuer, OverCeiling
from ..views import audit_document, key_document, spend_document
from . import budgets
from .key_requests import LARGEST_COUNT, ConflictingFields, InvalidField, key_request_from_json
from .openapi import OPENAPI
from .tokens import AdminTokens
from .validation import DESCRIPTION

MAX_BODY_BYTES = 64 * 1024
FAILURES_BEFORE_SLOWDOWN = 5
FAILURE_WINDOW_S = 60.0
MAX_FAILURE_DELAY_S = 5.0
MAX_TRACKED_ADDRESSES = 10_000

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


ERROR_MESSAGE_LIMIT = 256  # a message may quote what a request sent (a path, a name): never all of it


def error(status: int, code: str, message: str, field_name: str | None = None, **headers: str) -> ApiResponse:
    if len(message) > ERROR_MESSAGE_LIMIT:
        message = message[:ERROR_MESSAGE_LIMIT - 3] + "..."
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
        if len(self._failures) > MAX_TRACKED_ADDRESSES:  # bounded: forget the quiet addresses first
            for stale in [a for a, times in self._failures.items() if not times or now - times[-1] > FAILURE_WINDOW_S]:
                del self._failures[stale]
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
            issuer = await self._authenticate(request)
            if isinstance(issuer, ApiResponse):
                return issuer
            if issuer.problem is not None:  # fail closed: never read as "no ceiling"
                return error(403, "scope_unreadable", f"this admin token's scope is unreadable ({issuer.problem}); "
                                                      "revoke it and create another")
            if len(request.body) > MAX_BODY_BYTES:
                return error(413, "body_too_large", f"the body is over {MAX_BODY_BYTES} bytes")
            operation = DESCRIPTION.find(request.method, request.path)
            if operation is not None and (invalid := DESCRIPTION.check(operation, request.path, request.query,
                                                                       request.headers, request.body)):
                return error(400, invalid.code, invalid.message, invalid.field)
            return await self._route(request, issuer)
        except LedgerUnavailable as failure:
            return error(503, "unavailable", f"the vault is unavailable: {failure}", retry_after="2")

    async def _authenticate(self, request: ApiRequest) -> Issuer | ApiResponse:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            if (issuer := await self._run_in_db(self._tokens.authenticate, token.strip())) is not None:
                return issuer
        await asyncio.sleep(self._throttle.record(request.client_ip))
        return error(401, "unauthorized",
                     "send an admin token as `Authorization: Bearer kba_...` (create one with "
                     "`keybrake admin-token create`)", www_authenticate="Bearer")

    async def _route(self, request: ApiRequest, issuer: Issuer) -> ApiResponse:
        """Every route answers for the keys `issuer` may see: a scoped token's own, or all."""
        parts = request.path.rstrip("/").split("/")[1:]  # ["vault", "keys", id?]
        method = request.method
        if parts == ["vault", "keys"]:
            if method == "POST":
                return await self._issue(request, issuer)
            if method == "GET":
                return await self._list_keys(request, issuer)
            if method == "DELETE":
                return await self._revoke_label(request, issuer)
        elif len(parts) == 3 and parts[:2] == ["vault", "keys"]:
            if method == "GET":
                return await self._show_key(parts[2], issuer)
            if method == "DELETE":
                return await self._revoke_key(parts[2], issuer)
        elif parts == ["vault", "audit"] and method == "GET":
            return await self._audit(request, issuer)
        elif parts == ["vault", "spend"] and method == "GET":
            return await self._spend(request, issuer)
        elif parts[:2] == ["vault", "budgets"]:
            if not issuer.unrestricted:
                return await self._scoped_budgets(parts, request, issuer)
            return await budgets.route(parts, request, self._ledger, self._run_in_db, ApiResponse, error)
        elif parts[:2] == ["vault", "alerts"]:
            if not issuer.unrestricted:
                return error(403, "scoped_token", "alert subscriptions cover every key, so they take an unrestricted "
                                                  "admin token; this one is scoped")
            return await self._alerts.handle(request, parts[2:])
        else:
            return error(404, "not_found", f"no such endpoint: {request.path}")
        return error(405, "method_not_allowed", f"{method} is not allowed on {request.path}")

    async def _scoped_budgets(self, parts: list[str], request: ApiRequest, issuer: Issuer) -> ApiResponse:
        """A scoped token reads the budgets it mints into (its budget and those under it), and
        changes none: creating, freezing and unfreezing take an unrestricted token."""
        if request.method != "GET":
            return error(403, "scoped_token", "budgets are created, frozen and unfrozen with an unrestricted "
                                              "admin token; this one is scoped")
        ceiling = issuer.scope.budget if issuer.scope is not None else None

        def visible(name: str) -> bool:
            return ceiling is not None and ceiling in self._ledger.budget_lineage(name)

        if len(parts) == 2:
            records = await self._run_in_db(self._ledger.list_budgets)
            shown = [r for r in records if await self._run_in_db(visible, r.name)]
            return ApiResponse(200, {"data": [budgets.budget_document(r) for r in shown]})
        if len(parts) == 3 and not await self._run_in_db(visible, parts[2]):
            return error(404, "not_found", f"no budget {parts[2]}")
        return await budgets.route(parts, request, self._ledger, self._run_in_db, ApiResponse, error)

    async def _issue(self, request: ApiRequest, issuer: Issuer) -> ApiResponse:
        try:
            document = json.loads(request.body or b"null")
        except (ValueError, UnicodeDecodeError) as failure:
            return error(400, "invalid_json", f"the body is not valid JSON: {failure}")
        try:
            key_request = key_request_from_json(document)
        except ConflictingFields as failure:
            return error(422, "invalid_field", str(failure), failure.field)
        except InvalidField as failure:
            return error(400, "invalid_field", str(failure), failure.field)
        idempotency = None
        if idempotency_key := request.headers.get("idempotency-key"):
            fingerprint = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
            # Per token: another token's Idempotency-Key is another record, never this token's key.
            idempotency = IssuanceIdempotency(idempotency_key, fingerprint, issuer.token_id,
                                              replays_unattributed=issuer.unrestricted)
        installation = self._installation
        try:
            issued = await self._run_in_db(lambda: issue_key(installation.ledger, installation.master_key,
                                                             key_request, idempotency=idempotency, issuer=issuer))
        except OverCeiling as failure:
            return error(403, "over_ceiling", str(failure), failure.field)
        except IssueError as failure:  # the body fits the description (checked above): a rule it cannot state
            return error(422, "invalid_field", str(failure), failure.field)
        except IdempotencyMismatch:
            return error(409, "idempotency_mismatch",
                         "this Idempotency-Key was used with a different request in the last 24 hours")
        headers = {} if issued.created else {"idempotent-replayed": "true"}
        return ApiResponse(201 if issued.created else 200,
                           {"vault_key": issued.vault_key, **key_document(issued.record)}, headers)

    async def _list_keys(self, request: ApiRequest, issuer: Issuer) -> ApiResponse:
        active = request.query.get("active") == "true"  # the description allows true or false alone
        records = await self._run_in_db(self._ledger.list_keys, request.query.get("label"),
                                         utc_now() if active else None, issuer.own_keys_only)
        return ApiResponse(200, {"data": [key_document(r) for r in records]})

    async def _show_key(self, key_id: str, issuer: Issuer) -> ApiResponse:
        record = await self._run_in_db(self._ledger.get_key, key_id)
        if record is None or not issuer.sees(record):  # another token's key is no key at all to this one
            return error(404, "not_found", f"no vault key {key_id}")
        return ApiResponse(200, key_document(record))

    async def _revoke_key(self, key_id: str, issuer: Issuer) -> ApiResponse:
        if not await self._run_in_db(self._ledger.revoke_key, key_id, issuer.own_keys_only):
            return error(404, "not_found", f"no vault key {key_id}")
        return ApiResponse(200, {"revoked": [key_id]})

    async def _revoke_label(self, request: ApiRequest, issuer: Issuer) -> ApiResponse:
        label = request.query.get("label")
        if not label:
            return error(400, "invalid_field", "give ?label=... to revoke every key of one run", "label")
        return ApiResponse(200, {"revoked": await self._run_in_db(self._ledger.revoke_label, label,
                                                                  issuer.own_keys_only)})

    async def _audit(self, request: ApiRequest, issuer: Issuer) -> ApiResponse:
        where = _audit_filter(request.query, issuer)
        if isinstance(where, ApiResponse):
            return where
        rows = await self._run_in_db(self._ledger.audit_rows, where)
        return ApiResponse(200, {"data": [audit_document(row) for row in rows]})

    async def _spend(self, request: ApiRequest, issuer: Issuer) -> ApiResponse:
        by = request.query.get("by", "label")
        if by not in ("key", "label", "vendor", "day", "budget"):
            return error(400, "invalid_field", "by is one of key, label, vendor, day, budget", "by")
        where = _audit_filter(request.query, issuer)
        if isinstance(where, ApiResponse):
            return where
        rows = await self._run_in_db(self._ledger.spend, by, where)
        return ApiResponse(200, {"data": [spend_document(row) for row in rows]})


def _audit_filter(query: dict[str, str], issuer: Issuer) -> AuditFilter | ApiResponse:
    since = None
    if raw := query.get("since"):
        try:
            since = parse_since(raw)
        except ValueError as failure:
            return error(400, "invalid_field", str(failure), "since")
    limit = None
    if raw := query.get("limit"):
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 30 or not 0 < int(raw) <= LARGEST_COUNT:
            return error(400, "invalid_field", f"limit is a whole number from 1 to {LARGEST_COUNT}", "limit")
        limit = int(raw)
    return AuditFilter(label=query.get("label"), key_id=query.get("key"), since=since, limit=limit,
                       minted_by=issuer.own_keys_only)
