"""The Budgets page: every budget as a tree with its spend against its caps, and Freeze / Unfreeze.

A budget spans every key issued into it, whatever their labels and vendors, so only a viewer
who may see everything (an unrestricted scope) sees budgets or freezes one. Freezing refuses
the next call of every key under the budget, in its children too; unfreezing lets them be
decided again from their caps. Both go through the ledger, as `keybrake budget freeze` does.
"""

from datetime import UTC, datetime
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ...ledger.dashboard_reads import DashboardReads
from ...ledger.store import SqlLedger
from ...vault.budgets import NAME
from .auth import RunInDb, Viewer
from .budgets_tree import budget_rows
from .pages import BASE
from .rendering import Renderer

_FLASHES = {"frozen": "Budget {name} is frozen: the next call of every key under it is refused.",
            "unfrozen": "Budget {name} is unfrozen: its keys are decided from their caps again."}


class BudgetPages:
    def __init__(self, ledger: SqlLedger, reads: DashboardReads, renderer: Renderer, run_in_db: RunInDb) -> None:
        self._ledger = ledger
        self._reads = reads
        self._render = renderer
        self._db = run_in_db

    async def budgets(self, request: Request, viewer: Viewer) -> Response:
        rows = []
        if viewer.scope.unrestricted:
            rows = await self._db(lambda: budget_rows(self._ledger.list_budgets(), self._reads.budget_key_counts()))
        context = {"nav": "budgets", "rows": rows, "allowed": viewer.scope.unrestricted,
                   "flash": _flash(request), "frozen": sum(1 for r in rows if r.frozen_here), "now": datetime.now(UTC)}
        live = request.query_params.get("fragment") == "live"
        return self._render.response(request, "_budgets_live.html" if live else "budgets.html", context, viewer)

    async def freeze(self, request: Request, viewer: Viewer, form: dict[str, str]) -> Response:
        return await self._set_frozen(request, viewer, True)

    async def unfreeze(self, request: Request, viewer: Viewer, form: dict[str, str]) -> Response:
        return await self._set_frozen(request, viewer, False)

    async def _set_frozen(self, request: Request, viewer: Viewer, frozen: bool) -> Response:
        name = request.path_params["name"]
        if not viewer.scope.unrestricted:
            return self._render.response(request, "refused.html", {
                "message": "Budgets span every key, so only an unrestricted admin token freezes them."}, viewer,
                status=403)
        if not NAME.fullmatch(name) or await self._db(self._ledger.set_budget_frozen, name, frozen) is None:
            return self._render.response(request, "not_found.html", {"what": "No budget by that name."}, viewer,
                                         status=404)
        done = "frozen" if frozen else "unfrozen"
        return RedirectResponse(f"{BASE}/budgets?" + urlencode({"done": done, "budget": name}) + f"#budget-{name}",
                                status_code=303)


def _flash(request: Request) -> str | None:
    message, name = _FLASHES.get(request.query_params.get("done", "")), request.query_params.get("budget", "")
    return message.format(name=name) if message and NAME.fullmatch(name) else None
