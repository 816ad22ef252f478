"""GET /metrics: on the API listener behind an admin token, on --metrics-port without one.

Both render the same registry. Before rendering, the ledger's totals are refreshed (at most one
read every few seconds, see metrics/ledger_totals.py).
"""

import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from ..metrics.ledger_totals import LedgerTotals
from ..metrics.registry import Metrics
from ..vendors.base import RenderedResponse
from .admin_auth import AdminGate
from .services import LedgerAccess, ListenerServices

logger = logging.getLogger("keybrake")

METRICS_PATH = "/metrics"


class MetricsPage:
    def __init__(self, metrics: Metrics, ledger: Callable[[], Awaitable[LedgerAccess | None]]) -> None:
        self.metrics = metrics

        async def read_totals():
            access = await ledger()
            if access is None:
                return None
            return await access.run_in_db(access.ledger.metrics_totals)

        self._totals = LedgerTotals(metrics, read_totals)

    async def render(self, accept: str = "") -> tuple[bytes, str]:
        await self._totals.refresh()
        return self.metrics.render(accept)

    async def unauthenticated_answer(self, method: str, path: str) -> RenderedResponse:
        """What --metrics-port answers: /metrics only, no token (a private scrape network), in
        the Prometheus text format (that server reads no Accept header)."""
        if path.partition("?")[0] != METRICS_PATH:
            return _plain(404, "not found: the metrics are at /metrics")
        if method not in ("GET", "HEAD"):
            return _plain(405, "method not allowed", {"allow": "GET, HEAD"})
        try:
            body, content_type = await self.render()
        except Exception:  # noqa: BLE001 - a scrape that fails says so, and takes nothing else down
            logger.error("keybrake: rendering the metrics failed")
            return _plain(500, "the metrics could not be rendered; the proxy log says when")
        return RenderedResponse(200, {"content-type": content_type, "cache-control": "no-store"}, body)


def metrics_endpoint(page: MetricsPage, services: ListenerServices):
    """The listener's /metrics: the admin token first, then the text."""
    admin = AdminGate()

    async def endpoint(request: Request) -> Response:
        refused = await admin.refusal(request, await services.ledger(), services.not_ready_reason())
        if refused is not None:
            return refused
        body, content_type = await page.render(request.headers.get("accept", ""))
        return Response(body, 200, {"content-type": content_type, "cache-control": "no-store"})

    return endpoint


def _plain(status: int, text: str, headers: dict[str, str] | None = None) -> RenderedResponse:
    return RenderedResponse(status, {"content-type": "text/plain; charset=utf-8", **(headers or {})},
                            (text + "\n").encode())
