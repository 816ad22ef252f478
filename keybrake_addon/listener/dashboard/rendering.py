"""Jinja2 templates of the dashboard, autoescaped, with its filters."""

from pathlib import Path

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from .auth import Viewer
from .formatting import FILTERS

TEMPLATES = Path(__file__).parent / "templates"


class Renderer:
    def __init__(self, base: str, *, refresh_ms: int) -> None:
        self._env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                       undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self._env.filters.update(FILTERS)
        self._env.globals["base"] = base
        self._env.globals["refresh_ms"] = refresh_ms

    def render(self, template: str, context: dict) -> str:
        return self._env.get_template(template).render(context)

    def response(self, request: Request, template: str, context: dict, viewer: Viewer | None, *,
                 status: int = 200) -> HTMLResponse:
        page = self.render(template, {"request": request, "viewer": viewer,
                                      "csrf": viewer.csrf if viewer else "", "nav": None, **context})
        return HTMLResponse(page, status_code=status, headers={"cache-control": "no-store"})
