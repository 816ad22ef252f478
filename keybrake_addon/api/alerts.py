"""/vault/alerts: the alert subscriptions and their deliveries, as `keybrake alerts` offers them.

Transport-free like the rest of the vault API: handlers take an ApiRequest (already
authenticated) and return an ApiResponse. Database work and sending (a test, a retry by hand:
a few seconds at most) run on the gate's database thread, off the event loop.
"""

import json

from ..alerts import deliverer
from ..alerts.subscriptions import InvalidSubscription, create, delivery_document, document, parse_request
from ..ledger import alert_store
from . import vault_api as api

_FIELDS = {"url", "events", "thresholds", "label_prefix", "vendor", "format", "allow_private"}


class AlertsApi:
    def __init__(self, installation, run_in_db) -> None:
        self._installation = installation
        self._run_in_db = run_in_db

    async def handle(self, request, rest: list[str]):
        """`rest`: the path's parts after /vault/alerts."""
        method = request.method
        if rest == []:
            if method == "POST":
                return await self._add(request)
            if method == "GET":
                return await self._list()
        elif rest == ["deliveries"]:
            if method == "GET":
                return await self._deliveries(request)
        elif len(rest) == 3 and rest[0] == "deliveries" and rest[2] == "retry":
            if method == "POST":
                return await self._retry(rest[1])
        elif len(rest) == 1:
            if method == "GET":
                return await self._show(rest[0])
            if method == "DELETE":
                return await self._remove(rest[0])
        elif len(rest) == 2 and rest[1] == "test":
            if method == "POST":
                return await self._test(rest[0])
        else:
            return api.error(404, "not_found", f"no such endpoint: {request.path}")
        return api.error(405, "method_not_allowed", f"{method} is not allowed on {request.path}")

    async def _add(self, request):
        try:
            body = json.loads(request.body or b"null")
        except (ValueError, UnicodeDecodeError) as failure:
            return api.error(400, "invalid_json", f"the body is not valid JSON: {failure}")
        if not isinstance(body, dict):
            return api.error(400, "invalid_field", "the body is a JSON object with at least `url`")
        body = {name: value for name, value in body.items() if value is not None}  # null: not sent
        if unknown := sorted(set(body) - _FIELDS):
            return api.error(400, "invalid_field", f"unknown field {unknown[0][:40]!r}", unknown[0][:40])
        for name, kind in (("events", list), ("thresholds", list), ("allow_private", bool)):
            if name in body and not isinstance(body[name], kind):
                return api.error(400, "invalid_field", f"{name} is a{'n array' if kind is list else ' boolean'}", name)
        for name in ("url", "label_prefix", "vendor", "format"):
            if body.get(name) is not None and not isinstance(body[name], str):
                return api.error(400, "invalid_field", f"{name} is a string", name)
        if not body.get("url"):
            return api.error(400, "invalid_field", "url is required", "url")
        thresholds = body.get("thresholds")
        if thresholds is not None:  # JSON has one number type: 80.0 is the whole percent 80
            thresholds = [int(t) if isinstance(t, float) and t.is_integer() else t for t in thresholds]
        try:
            parsed = parse_request(body["url"], events=body.get("events"), thresholds=thresholds,
                                   label_prefix=body.get("label_prefix"), vendor=body.get("vendor"),
                                   fmt=body.get("format") or "standard", allow_private=body.get("allow_private", False))
        except InvalidSubscription as invalid:  # the body fits the description: a rule it cannot state
            return api.error(422, "invalid_field", str(invalid), invalid.field)
        installation = self._installation
        subscription, secret = await self._run_in_db(create, installation.ledger, installation.master_key, parsed)
        return api.ApiResponse(201, {**document(subscription), "signing_secret": secret})

    async def _list(self):
        found = await self._run_in_db(alert_store.subscriptions, self._installation.ledger)
        return api.ApiResponse(200, {"data": [document(s) for s in found]})

    async def _show(self, subscription_id: str):
        found = await self._run_in_db(alert_store.subscription, self._installation.ledger, subscription_id)
        if found is None or found.removed_at is not None:
            return api.error(404, "not_found", f"no alert subscription {subscription_id}")
        return api.ApiResponse(200, document(found))

    async def _remove(self, subscription_id: str):
        cancelled = await self._run_in_db(alert_store.remove_subscription, self._installation.ledger, subscription_id)
        if cancelled is None:
            return api.error(404, "not_found", f"no alert subscription {subscription_id}")
        return api.ApiResponse(200, {"removed": [subscription_id], "cancelled_deliveries": cancelled})

    async def _test(self, subscription_id: str):
        installation = self._installation
        try:
            event_id, result = await self._run_in_db(deliverer.send_test, installation.ledger, installation.master_key,
                                                     subscription_id)
        except LookupError as missing:
            return api.error(404, "not_found", str(missing))
        return api.ApiResponse(200, {"subscription_id": subscription_id, "event_id": event_id,
                                 "delivered": result.delivered, "status": result.status, "error": result.error})

    async def _deliveries(self, request):
        failed = request.query.get("failed", "false").lower()
        if failed not in ("true", "false", "1", "0"):
            return api.error(400, "invalid_field", "failed is true or false", "failed")
        rows = await self._run_in_db(lambda: alert_store.deliveries(self._installation.ledger,
                                                                    failed=failed in ("true", "1")))
        return api.ApiResponse(200, {"data": [delivery_document(r) for r in rows]})

    async def _retry(self, delivery_id: str):
        installation = self._installation
        try:
            recorded = await self._run_in_db(deliverer.retry_by_hand, installation.ledger, installation.master_key,
                                             delivery_id)
        except LookupError as missing:
            return api.error(404, "not_found", str(missing))
        except ValueError as refused:
            return api.error(409, "not_retryable", str(refused))
        if recorded is None:
            return api.error(409, "not_retryable", f"delivery {delivery_id} was cancelled: its subscription was removed")
        return api.ApiResponse(200, delivery_document(recorded))
