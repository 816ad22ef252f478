"""The vault API's budgets: /vault/budgets (GET list, POST create), /vault/budgets/{name} (GET),
/vault/budgets/{name}/freeze and /unfreeze (POST). VaultApi authenticates the caller first."""

import json
from collections.abc import Awaitable, Callable

from ..budget_views import budget_document
from ..money import InvalidAmount, usd_to_micros
from ..vault.budgets import BudgetError, BudgetRequest, create_budget

FIELDS = {"name": str, "parent": str, "daily_usd_cap": "usd", "total_usd_cap": "usd"}


async def route(parts: list[str], request, ledger, run_in_db: Callable[..., Awaitable], respond, error):
    """Answer a /vault/budgets request; `respond(status, document)` and `error(...)` build the
    ApiResponse (passed in, so this module needs nothing of vault_api's)."""
    method = request.method
    if len(parts) == 2:
        if method == "GET":
            return respond(200, {"data": [budget_document(r) for r in await run_in_db(ledger.list_budgets)]})
        if method == "POST":
            return await _create(request, ledger, run_in_db, respond, error)
    elif len(parts) == 3:
        if method == "GET":
            record = await run_in_db(ledger.get_budget, parts[2])
            if record is None:
                return error(404, "not_found", f"no budget {parts[2]}")
            return respond(200, budget_document(record))
    elif len(parts) == 4 and parts[3] in ("freeze", "unfreeze"):
        if method == "POST":
            record = await run_in_db(ledger.set_budget_frozen, parts[2], parts[3] == "freeze")
            if record is None:
                return error(404, "not_found", f"no budget {parts[2]}")
            return respond(200, budget_document(record))
    else:
        return error(404, "not_found", f"no such endpoint: {request.path}")
    return error(405, "method_not_allowed", f"{method} is not allowed on {request.path}")


async def _create(request, ledger, run_in_db, respond, error):
    try:
        document = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError) as failure:
        return error(400, "invalid_json", f"the body is not valid JSON: {failure}")
    if not isinstance(document, dict):
        return error(400, "invalid_field", "body: expected a JSON object", "body")
    values = {}
    for name, value in document.items():
        kind = FIELDS.get(name)
        if kind is None:
            return error(400, "invalid_field", f"{name}: unknown field (known: {', '.join(FIELDS)})", name)
        if value is None:
            continue
        if kind == "usd":
            try:
                if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                    raise InvalidAmount("expected a dollar amount")
                values[name] = usd_to_micros(value)
            except InvalidAmount as failure:
                return error(400, "invalid_field", f"{name}: {failure}", name)
        elif not isinstance(value, str):
            return error(400, "invalid_field", f"{name}: expected a string", name)
        else:
            values[name] = value
    if "name" not in values:
        return error(400, "invalid_field", "name: required", "name")
    budget_request = BudgetRequest(values["name"], values.get("parent"), values.get("daily_usd_cap"),
                                   values.get("total_usd_cap"))
    try:
        record = await run_in_db(create_budget, ledger, budget_request)
    except BudgetError as failure:
        if failure.field == "name" and "already exists" in failure.reason:
            return error(409, "budget_exists", str(failure), "name")
        # The body fits the description (VaultApi checked it): a rule it cannot state, such as a parent that exists.
        return error(422, "invalid_field", str(failure), failure.field)
    return respond(201, budget_document(record))
