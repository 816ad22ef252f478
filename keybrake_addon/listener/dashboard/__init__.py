"""The spend dashboard served under /ui on the API listener: server-rendered pages (Jinja2), a
session cookie after signing in with an admin token, charts drawn by uPlot shipped in `static/`
(no CDN, no build step). Mount `dashboard_routes(...)` in the listener's Starlette app."""

from .routes import dashboard_routes

__all__ = ["dashboard_routes"]
