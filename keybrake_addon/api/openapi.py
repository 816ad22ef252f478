"""The OpenAPI 3.1 description of the vault API, served at GET /vault/openapi.json.

The API checks each request against it (validation.py; the inputs are in openapi_inputs.py),
and the tests validate its answers against it and run schemathesis against it.
"""

from ..ledger.alert_events import KINDS
from .openapi_inputs import (ALERT_SUBSCRIPTION_REQUEST, AUDIT_FILTERS, BOOLEAN, BUDGET_NAME, BUDGET_REQUEST,
                             DELIVERY_ID, KEY_ID, KEY_REQUEST, LABEL_FILTER, PRINTABLE, SUBSCRIPTION_ID, path, query)

_USD = {"type": ["string", "null"], "pattern": r"^\d+(\.\d+)?$", "description": "US dollars, as a decimal string"}
_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": _json(_ERROR, "The request does not fit this description; `error.field` names the field"),
    "401": _json(_ERROR, "Missing or wrong admin token"),
    "403": _json(_ERROR, "The admin token's stored scope is unreadable (`scope_unreadable`)"),
    "404": _json(_ERROR, "No such route (or no such key)"),
    "405": _json(_ERROR, "The route exists, the method does not"),
    "413": _json(_ERROR, "Body over 64 KiB"),
    "503": _json(_ERROR, "The vault database is unavailable; retry after Retry-After"),
}

_KEY = {
    "type": "object",
    "required": ["key_id", "vendor", "label", "status", "spent_usd", "reserved_usd", "remaining_usd", "expires_at"],
    "properties": {
        "key_id": {"type": "string", "pattern": "^kbk_"},
        "vendor": {"enum": ["stripe", "twilio", "resend"]},
        "secret": {"type": "string"},
        "label": {"type": ["string", "null"]},
        "status": {"enum": ["active", "expired", "revoked"]},
        "daily_usd_cap": _USD, "total_usd_cap": _USD,
        "max_calls": {"type": ["integer", "null"]},
        "allowed_endpoints": {"type": "array", "items": {"type": "string"}},
        "allow_all": {"type": "boolean"}, "allow_unpriced": {"type": "boolean"},
        "budget": {"type": ["string", "null"], "description": "the budget it spends from"},
        "stripe_account": {"type": ["string", "null"], "description": "the Connect account it acts for"},
        "spent_usd": _USD, "reserved_usd": _USD, "unknown_usd": _USD,
        "remaining_usd": {"type": "string", "description": "headroom under the tightest cap, or 'unlimited'"},
        "calls": {"type": "integer"},
        "created_at": {"type": "string", "format": "date-time"},
        "expires_at": {"type": ["string", "null"], "format": "date-time"},
        "revoked_at": {"type": ["string", "null"], "format": "date-time"},
        "minted_by": {"type": ["string", "null"],
                      "description": "the admin token (kbt_...) that minted the key; null: the CLI, or before schema 6"},
    },
}

_UNPROCESSABLE = {"422": _json(_ERROR, "The request fits this description but breaks a rule it cannot state "
                                       "(see the request body's description); `error.field` names the field")}
_BUDGET = {
    "type": "object",
    "required": ["name", "parent", "status", "spent_usd", "reserved_usd", "remaining_usd", "calls"],
    "properties": {
        "name": BUDGET_NAME, "parent": {"type": ["string", "null"]},
        "status": {"enum": ["active", "frozen"], "description": "frozen when it or an ancestor is"},
        "frozen_by": {"type": ["string", "null"], "description": "the budget whose freeze stops its keys"},
        "frozen_at": {"type": ["string", "null"], "format": "date-time", "description": "its own freeze"},
        "daily_usd_cap": _USD, "total_usd_cap": _USD,
        "spent_usd": _USD, "reserved_usd": _USD,
        "today_usd": _USD,
        "remaining_usd": {"type": "string", "description": "what a key in it may still spend: headroom under the tightest "
                                                           "cap of it and its ancestors, or 'unlimited'"},
        "calls": {"type": "integer"},
        "children": {"type": "array", "items": {"type": "string"}},
        "created_at": {"type": "string", "format": "date-time"},
    },
}
_BUDGET_REF = {"$ref": "#/components/schemas/Budget"}
_EVENT_TYPES = list(KINDS)
_SUBSCRIPTION = {
    "type": "object",
    "required": ["id", "url", "events", "thresholds", "format", "allow_private", "created_at"],
    "properties": {
        "id": {"type": "string", "pattern": "^sub_"},
        "url": {"type": "string", "description": "shown without its query and past two path segments (a Slack "
                                                 "webhook's path is its secret)"},
        "events": {"type": "array", "items": {"enum": _EVENT_TYPES}},
        "thresholds": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 100}},
        "label_prefix": {"type": ["string", "null"]},
        "vendor": {"type": ["string", "null"]},
        "format": {"enum": ["standard", "slack"]},
        "allow_private": {"type": "boolean"},
        "created_at": {"type": "string", "format": "date-time"},
        "removed_at": {"type": ["string", "null"], "format": "date-time"},
    },
}
_DELIVERY = {
    "type": "object",
    "required": ["id", "event_id", "type", "subscription_id", "state", "attempts"],
    "properties": {
        "id": {"type": "string", "pattern": "^dlv_"}, "event_id": {"type": "string", "pattern": "^evt_"},
        "type": {"type": "string"}, "subscription_id": {"type": "string"}, "key_id": {"type": ["string", "null"]},
        "state": {"enum": ["pending", "delivered", "failed", "cancelled"],
                  "description": "failed: gave up after 24 h of retries (retry it by hand)"},
        "attempts": {"type": "integer"}, "created_at": {"type": "string"},
        "next_attempt_at": {"type": ["string", "null"]}, "last_attempt_at": {"type": ["string", "null"]},
        "last_status": {"type": ["integer", "null"]}, "last_error": {"type": ["string", "null"]},
        "delivered_at": {"type": ["string", "null"]},
    },
}
_SUBSCRIPTION_ID = [path("subscription_id", SUBSCRIPTION_ID)]

OPENAPI: dict = {
    "openapi": "3.1.0",
    "info": {"title": "Keybrake vault API", "version": "1",
             "description": "Issue, find and revoke capped vault keys; read the audit trail and spend. "
                            "Every endpoint but this description needs `Authorization: Bearer <admin token>`. "
                            "A request that does not fit this description is a 400 naming the field "
                            "(`error.field`); one that fits it but breaks a rule it cannot state (a budget "
                            "that must exist, a key that needs a cap) is a 422 naming the field. "
                            "A scoped admin token mints only keys inside its ceilings (else 403 naming the "
                            "field) and sees, lists, revokes and replays only the keys it minted: another "
                            "token's key is a 404 to it, and audit and spend cover its own keys alone."},
    "components": {
        "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}}}}},
            "Key": _KEY,
            "Budget": _BUDGET,
            "BudgetRequest": BUDGET_REQUEST,
            "IssuedKey": {"allOf": [{"$ref": "#/components/schemas/Key"}, {
                "type": "object", "required": ["vault_key"],
                "properties": {"vault_key": {"type": "string", "description": "shown once; send it as the vendor secret"}}}]},
            "KeyList": {"type": "object", "required": ["data"],
                        "properties": {"data": {"type": "array", "items": {"$ref": "#/components/schemas/Key"}}}},
            "Revoked": {"type": "object", "required": ["revoked"],
                        "properties": {"revoked": {"type": "array", "items": {"type": "string"}}}},
            "KeyRequest": KEY_REQUEST,
            "AuditRow": {"type": "object", "required": ["ts", "vendor", "method", "path", "decision"], "properties": {
                "ts": {"type": "string"}, "key_id": {"type": ["string", "null"]}, "label": {"type": ["string", "null"]},
                "vendor": {"type": "string"}, "method": {"type": "string"}, "path": {"type": "string"},
                "status": {"type": ["integer", "null"]}, "decision": {"type": "string"},
                "outcome": {"type": ["string", "null"]}, "reserved_usd": _USD, "actual_usd": _USD,
                "amount_minor": {"type": ["integer", "null"]}, "currency": {"type": ["string", "null"]},
                "object_id": {"type": ["string", "null"]}, "idempotency_key": {"type": ["string", "null"]},
                "vendor_request_id": {"type": ["string", "null"]}, "duration_ms": {"type": ["number", "null"]},
                "replayed": {"type": "boolean"}}},
            "AlertSubscription": _SUBSCRIPTION,
            "NewAlertSubscription": {"allOf": [{"$ref": "#/components/schemas/AlertSubscription"}, {
                "type": "object", "required": ["signing_secret"],
                "properties": {"signing_secret": {"type": "string", "pattern": "^whsec_",
                                                  "description": "shown once: verify each delivery with it"}}}]},
            "AlertSubscriptionRequest": ALERT_SUBSCRIPTION_REQUEST,
            "AlertDelivery": _DELIVERY,
            "AlertAttempt": {"type": "object", "required": ["subscription_id", "event_id", "delivered"], "properties": {
                "subscription_id": {"type": "string"}, "event_id": {"type": "string"}, "delivered": {"type": "boolean"},
                "status": {"type": ["integer", "null"]}, "error": {"type": ["string", "null"]}}},
            "SpendRow": {"type": "object", "required": ["spent_usd", "reserved_usd", "calls"], "properties": {
                "key": {"type": ["string", "null"]}, "label": {"type": ["string", "null"]},
                "budget": {"type": ["string", "null"], "description": "includes its child budgets' figures"},
                "vendor": {"type": "string"}, "day": {"type": "string"},
                "spent_usd": _USD, "reserved_usd": _USD, "calls": {"type": "integer"},
                "allowed": {"type": "integer"}, "refused": {"type": "integer"}, "cap_hits": {"type": "integer"}}},
        },
    },
    "security": [{"adminToken": []}],
    "paths": {
        "/vault/keys": {
            "post": {
                "summary": "Issue a vault key",
                "description": "Issues a capped, scoped vault key, shown once. Every key expires: after "
                               "`expires_in`, else after the installation's default key TTL (24h unless changed). "
                               "A lifetime over the installation's maximum (30d unless raised) is refused.",
                "parameters": [{"name": "Idempotency-Key", "in": "header", "schema": PRINTABLE,
                                "description": "the same key and body from the same admin token within 24 h "
                                               "return the same vault key; another token's Idempotency-Key "
                                               "is another record"}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/KeyRequest"}}}},
                "responses": {"201": _json({"$ref": "#/components/schemas/IssuedKey"}, "Issued"),
                              "200": _json({"$ref": "#/components/schemas/IssuedKey"}, "Replayed issuance"),
                              "409": _json(_ERROR, "Idempotency-Key reused with another body"), **_ERRORS,
                              **_UNPROCESSABLE,
                              "403": _json(_ERROR, "Over one of the admin token's ceilings (`over_ceiling`); "
                                                   "`error.field` names the request field")},
            },
            "get": {
                "summary": "List vault keys",
                "parameters": [LABEL_FILTER, query("active", BOOLEAN, "only keys neither expired nor revoked")],
                "responses": {"200": _json({"$ref": "#/components/schemas/KeyList"}, "Keys"), **_ERRORS},
            },
            "delete": {
                "summary": "Revoke every key of one run label",
                "parameters": [query("label", {**PRINTABLE, "minLength": 1}, "the run label whose keys to revoke; "
                                     "never empty: there is no \"revoke everything\"", required=True)],
                "responses": {"200": _json({"$ref": "#/components/schemas/Revoked"}, "Revoked"), **_ERRORS},
            },
        },
        "/vault/keys/{key_id}": {
            "parameters": [path("key_id", KEY_ID)],
            "get": {"summary": "One key with spent, reserved and remaining",
                    "responses": {"200": _json({"$ref": "#/components/schemas/Key"}, "The key"),
                                  "404": _json(_ERROR, "No such key"), **_ERRORS}},
            "delete": {"summary": "Revoke a key (idempotent); the next request with it is refused. The key "
                                  "stays readable (GET shows it with status revoked and what it spent)",
                       "responses": {"200": _json({"$ref": "#/components/schemas/Revoked"}, "Revoked"),
                                     "404": _json(_ERROR, "No such key"), **_ERRORS}},
        },
        "/vault/budgets": {
            "get": {"summary": "List budgets",
                    "responses": {"200": _json({"type": "object", "required": ["data"], "properties": {
                        "data": {"type": "array", "items": _BUDGET_REF}}}, "Budgets"), **_ERRORS}},
            "post": {
                "summary": "Create a budget",
                "description": "A budget caps what every key issued into it (`budget` on POST /vault/keys) spends "
                               "together, and its parent's caps what all its children spend together. Each call is "
                               "checked against the key's caps and every ancestor budget's in one transaction; a "
                               "call over a budget's cap gets the vendor's 429 with `x-keybrake-cap: budget:NAME`.",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/BudgetRequest"}}}},
                "responses": {"201": _json(_BUDGET_REF, "Created"),
                              "409": _json(_ERROR, "A budget of that name exists"), **_ERRORS, **_UNPROCESSABLE},
            },
        },
        "/vault/budgets/{name}": {
            "parameters": [path("name", BUDGET_NAME)],
            "get": {"summary": "One budget: caps, spent, reserved, today's figures, children",
                    "responses": {"200": _json(_BUDGET_REF, "The budget"), **_ERRORS}},
        },
        "/vault/budgets/{name}/freeze": {
            "parameters": [path("name", BUDGET_NAME)],
            "post": {"summary": "Freeze a budget: every key under it is refused from its next call, like a "
                                "revoked key (idempotent)",
                     "responses": {"200": _json(_BUDGET_REF, "Frozen"), **_ERRORS}},
        },
        "/vault/budgets/{name}/unfreeze": {
            "parameters": [path("name", BUDGET_NAME)],
            "post": {"summary": "Unfreeze a budget (its keys stay refused while an ancestor is frozen)",
                     "responses": {"200": _json(_BUDGET_REF, "Unfrozen"), **_ERRORS}},
        },
        "/vault/alerts": {
            "post": {
                "summary": "Subscribe a URL to alerts",
                "description": "Events are written to the ledger with the money movement that caused them and "
                               "delivered by the running proxies, signed the Standard Webhooks way (webhook-id, "
                               "webhook-timestamp, webhook-signature), retried 30 s doubling to 1 h for 24 h.",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/AlertSubscriptionRequest"}}}},
                "responses": {"201": _json({"$ref": "#/components/schemas/NewAlertSubscription"}, "Subscribed"),
                              **_ERRORS, **_UNPROCESSABLE},
            },
            "get": {"summary": "Active alert subscriptions (never their secrets)",
                    "responses": {"200": _json({"type": "object", "required": ["data"], "properties": {"data": {
                        "type": "array", "items": {"$ref": "#/components/schemas/AlertSubscription"}}}},
                        "Subscriptions"), **_ERRORS}},
        },
        "/vault/alerts/{subscription_id}": {
            "parameters": _SUBSCRIPTION_ID,
            "get": {"summary": "One alert subscription",
                    "responses": {"200": _json({"$ref": "#/components/schemas/AlertSubscription"}, "It"), **_ERRORS}},
            "delete": {"summary": "Remove a subscription; its deliveries not sent yet are cancelled",
                       "responses": {"200": _json({"type": "object", "required": ["removed"], "properties": {
                           "removed": {"type": "array", "items": {"type": "string"}},
                           "cancelled_deliveries": {"type": "integer"}}}, "Removed"), **_ERRORS}},
        },
        "/vault/alerts/{subscription_id}/test": {
            "parameters": _SUBSCRIPTION_ID,
            "post": {"summary": "Send an alert.test event now (signed, not retried) and say how it went",
                     "responses": {"200": _json({"$ref": "#/components/schemas/AlertAttempt"}, "Attempted"),
                                   **_ERRORS}},
        },
        "/vault/alerts/deliveries": {"get": {
            "summary": "Alert deliveries, newest first (200 at most)",
            "parameters": [query("failed", BOOLEAN, "only those that failed at least once and were not delivered")],
            "responses": {"200": _json({"type": "object", "required": ["data"], "properties": {"data": {
                "type": "array", "items": {"$ref": "#/components/schemas/AlertDelivery"}}}}, "Deliveries"),
                **_ERRORS}}},
        "/vault/alerts/deliveries/{delivery_id}/retry": {
            "parameters": [path("delivery_id", DELIVERY_ID)],
            "post": {"summary": "Send one delivery now (pending or failed)",
                     "responses": {"200": _json({"$ref": "#/components/schemas/AlertDelivery"}, "Attempted"),
                                   "409": _json(_ERROR, "Delivered or cancelled already"), **_ERRORS}},
        },
        "/vault/audit": {"get": {
            "summary": "Audit rows, one per call, refused ones included",
            "parameters": AUDIT_FILTERS,
            "responses": {"200": _json({"type": "object", "required": ["data"], "properties": {
                "data": {"type": "array", "items": {"$ref": "#/components/schemas/AuditRow"}}}}, "Rows"), **_ERRORS}}},
        "/vault/spend": {"get": {
            "summary": "Spend totals",
            "parameters": [*AUDIT_FILTERS, query("by", {"enum": ["key", "label", "vendor", "day", "budget"]},
                                                 "the grouping column each row carries (default label)")],
            "responses": {"200": _json({"type": "object", "required": ["data"], "properties": {
                "data": {"type": "array", "items": {"$ref": "#/components/schemas/SpendRow"}}}}, "Totals"), **_ERRORS}}},
    },
}
