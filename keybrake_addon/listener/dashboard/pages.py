"""The dashboard's pages: overview, runs, a run, a key, the audit trail; and its two actions
(the Budgets page and its own two are in budget_pages.py).

Every handler gets the signed-in `Viewer`, and reads only through `DashboardReads` with the
viewer's scope, so what a token may see is decided in one place (`visibility.py`). A page asked
for with `?fragment=live` answers with its live part only: the browser polls that to refresh a
page without reloading it.
"""

import re
from datetime import UTC, datetime
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from ...ledger.dashboard_reads import AuditCursor, DashboardReads
from ...ledger.store import SqlLedger
from . import charts
from .audit_filters import DECISIONS, csv_header, csv_rows, parse_filters
from .auth import RunInDb, Viewer
from .rendering import Renderer
from .runs_tree import breadcrumbs

BASE = "/ui"
RUNS_PER_PAGE = 50
RUN_CALLS = 20
MAX_LABEL_CHARS = 512
_KEY_ID = re.compile(r"[A-Za-z0-9_]{1,64}")


class Pages:
    def __init__(self, ledger: SqlLedger, reads: DashboardReads, renderer: Renderer, run_in_db: RunInDb) -> None:
        self._ledger = ledger
        self._reads = reads
        self._render = renderer
        self._db = run_in_db

    def _page(self, request: Request, viewer: Viewer, template: str, context: dict, status: int = 200) -> Response:
        """The whole page, or with ?fragment=live only its live part (`_<name>_live.html`)."""
        if request.query_params.get("fragment") == "live":
            return self._render.response(request, f"_{template.removesuffix('.html')}_live.html", context, viewer,
                                         status=status)
        return self._render.response(request, template, context, viewer, status=status)

    def not_found(self, request: Request, viewer: Viewer, what: str) -> Response:
        return self._render.response(request, "not_found.html", {"what": what}, viewer, status=404)

    # --- overview -----------------------------------------------------------------------------

    async def overview(self, request: Request, viewer: Viewer) -> Response:
        def load():
            overview = self._reads.overview(viewer.scope)
            since, points = self._reads.spend_series(viewer.scope)
            return overview, since, points

        overview, since, points = await self._db(load)
        context = {
            "nav": "overview", "o": overview,
            "today_spent": sum(v.today_spent for v in overview.vendors),
            "today_reserved": sum(v.today_reserved for v in overview.vendors),
            "month_spent": sum(v.month_spent for v in overview.vendors),
            "chart": charts.as_json(charts.hourly_spend(since, overview.now, points)),
            "has_spend": any(p.micros for p in points),
        }
        return self._page(request, viewer, "overview.html", context)

    # --- runs ---------------------------------------------------------------------------------

    async def runs(self, request: Request, viewer: Viewer) -> Response:
        prefix = request.query_params.get("prefix", "")[:MAX_LABEL_CHARS]
        page = _page_number(request)
        found = await self._db(lambda: self._reads.run_nodes(viewer.scope, prefix, limit=RUNS_PER_PAGE,
                                                               offset=(page - 1) * RUNS_PER_PAGE))
        pages = max(1, -(-found.total // RUNS_PER_PAGE))
        context = {"nav": "runs", "prefix": prefix, "crumbs": breadcrumbs(prefix), "nodes": found.nodes,
                   "page": page, "pages": pages, "total": found.total,
                   "page_link": lambda n: "?" + urlencode({k: v for k, v in (("prefix", prefix), ("page", n)) if v})}
        return self._page(request, viewer, "runs.html", context)

    async def run(self, request: Request, viewer: Viewer) -> Response:
        unlabelled = request.query_params.get("unlabelled") == "1"
        label = "" if unlabelled else request.query_params.get("label", "")[:MAX_LABEL_CHARS]
        if not label and not unlabelled:
            return RedirectResponse(f"{BASE}/runs", status_code=303)

        def load():
            keys = self._reads.run_keys(viewer.scope, label)
            if not keys:
                return None
            return (keys, self._reads.run_spend_series(viewer.scope, label),
                    self._reads.recent_calls(viewer.scope, label=label, rows=RUN_CALLS),
                    self._reads.run_cap_hits(viewer.scope, label))

        loaded = await self._db(load)
        if loaded is None:
            return self.not_found(request, viewer, "No run with that label (or none you may see).")
        keys, series, calls, cap_hits = loaded
        now = datetime.now(UTC)
        capped = [k for k in keys if k.spec.total_cap_micros is not None]
        total_cap = sum(k.spec.total_cap_micros for k in capped) if capped and len(capped) == len(keys) else None
        start = min(k.created_at for k in keys)
        context = {
            "nav": "runs", "label": label, "unlabelled": unlabelled, "keys": keys, "now": now, "flash": _flash(request),
            "crumbs": breadcrumbs(label.rsplit("/", 1)[0] + "/") if "/" in label else [],
            "spent": sum(k.spent_micros for k in keys), "reserved": sum(k.reserved_micros for k in keys),
            "unknown": sum(k.unknown_micros for k in keys), "calls_total": sum(k.calls for k in keys),
            "total_cap": total_cap, "cap_hits": cap_hits, "calls": calls,
            "active": sum(1 for k in keys if k.status(now) == "active"),
            "chart": charts.as_json(charts.cumulative_spend(start, now, series, total_cap)),
            "audit_link": f"{BASE}/audit?" + urlencode({"label": label}) if label else None,
        }
        return self._page(request, viewer, "run.html", context)

    # --- a key --------------------------------------------------------------------------------

    async def key(self, request: Request, viewer: Viewer) -> Response:
        key_id = request.path_params["key_id"]
        if not _KEY_ID.fullmatch(key_id):
            return self.not_found(request, viewer, "No such vault key.")
        after = AuditCursor.parse(request.query_params.get("after", "")) if request.query_params.get("after") else None

        def load():
            record = self._reads.key(viewer.scope, key_id)
            if record is None:
                return None
            return (record, self._reads.open_holds(key_id), self._reads.recent_calls(viewer.scope, key_id=key_id,
                                                                                       after=after),
                    self._reads.key_spend_series(key_id))

        loaded = await self._db(load)
        if loaded is None:
            return self.not_found(request, viewer, f"No vault key {key_id} (or not one you may see).")
        record, holds, calls, series = loaded
        now = datetime.now(UTC)
        end = min(now, record.revoked_at or now, record.spec.expires_at or now)
        context = {
            "nav": "runs", "k": record, "status": record.status(now), "holds": holds, "calls": calls,
            "after": after, "now": now, "flash": _flash(request),
            "chart": charts.as_json(charts.cumulative_spend(record.created_at, max(end, record.created_at), series,
                                                            record.spec.total_cap_micros)),
            "older_link": f"?after={calls.next_cursor.text()}" if calls.next_cursor else None,
        }
        return self._page(request, viewer, "key.html", context)

    async def revoke_key(self, request: Request, viewer: Viewer, form: dict[str, str]) -> Response:
        key_id = request.path_params["key_id"]
        if not _KEY_ID.fullmatch(key_id):
            return self.not_found(request, viewer, "No such vault key.")

        def revoke():
            if self._reads.key(viewer.scope, key_id) is None:
                return False
            return self._ledger.revoke_key(key_id)

        if not await self._db(revoke):
            return self.not_found(request, viewer, f"No vault key {key_id} (or not one you may see).")
        return RedirectResponse(f"{BASE}/keys/{key_id}?done=revoked", status_code=303)

    async def revoke_run(self, request: Request, viewer: Viewer, form: dict[str, str]) -> Response:
        label = form.get("label", "")[:MAX_LABEL_CHARS]
        if not label:
            return self.not_found(request, viewer, "Give the run's label to revoke it.")

        def revoke() -> list[str]:
            if viewer.scope.unrestricted:
                return self._ledger.revoke_label(label)
            # A scoped token revokes only the keys it may see, one by one.
            visible = self._reads.run_keys(viewer.scope, label)
            return [k.key_id for k in visible if self._ledger.revoke_key(k.key_id)]

        revoked = await self._db(revoke)
        if not revoked:
            return self.not_found(request, viewer, "No run with that label (or none you may see).")
        back = form.get("back", "")
        if not (back.startswith(f"{BASE}/keys/") and _KEY_ID.fullmatch(back.removeprefix(f"{BASE}/keys/"))):
            back = f"{BASE}/run?" + urlencode({"label": label})
        return RedirectResponse(back + ("&" if "?" in back else "?") + f"done=run_revoked&count={len(revoked)}",
                                status_code=303)

    # --- audit --------------------------------------------------------------------------------

    async def audit(self, request: Request, viewer: Viewer) -> Response:
        filters = parse_filters(request.query_params)
        page, vendors = await self._db(lambda: (self._reads.audit_page(viewer.scope, filters.query, filters.after),
                                                self._reads.known_vendors(viewer.scope)))
        context = {"nav": "audit", "f": filters, "page": page, "vendors": vendors, "decisions": DECISIONS,
                   "filtered": any(filters.values.values()),
                   "older_link": "?" + filters.link(after=page.next_cursor.text()) if page.next_cursor else None,
                   "newest_link": "?" + filters.link(after=None) if filters.after else None,
                   "export_link": f"{BASE}/audit.csv?" + filters.link(after=None)}
        return self._page(request, viewer, "audit.html", context)

    async def audit_csv(self, request: Request, viewer: Viewer) -> Response:
        filters = parse_filters(request.query_params)
        chunks = self._reads.audit_export(viewer.scope, filters.query)

        async def body():
            yield csv_header()
            while True:
                chunk = await self._db(next, chunks, None)  # each chunk read on the database's thread
                if chunk is None:
                    return
                yield csv_rows(chunk)

        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        return StreamingResponse(body(), media_type="text/csv; charset=utf-8", headers={
            "content-disposition": f'attachment; filename="keybrake-audit-{stamp}.csv"', "cache-control": "no-store"})


def _page_number(request: Request) -> int:
    raw = request.query_params.get("page", "1")
    return int(raw) if raw.isdigit() and 0 < int(raw) < 1_000_000 else 1


def _flash(request: Request) -> str | None:
    done = request.query_params.get("done")
    if done == "revoked":
        return "The key is revoked: its next call is refused."
    if done == "run_revoked":
        count = request.query_params.get("count", "")
        keys = f"{count} key" + ("" if count == "1" else "s") if count.isdigit() else "its keys"
        return f"The run is revoked ({keys}): every next call is refused."
    return None

