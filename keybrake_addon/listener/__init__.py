"""The API listener's own surface, as one ASGI application (app.py).

    /healthz, /readyz   health, no token (health.py's fixed words)
    /metrics            Prometheus metrics, admin token (metrics_page.py)
    /vault/...          the vault API (api/vault_api.py), through vault_routes.py
    /ui/...             the dashboard, mounted through `extra_routes` (not built yet)

The vendor routes of the same listener (/stripe, /twilio, /resend, /v1) are not here: they are
the vendor gate, which stays in addon.py. The addon hands every other request on the listener
to this app in-process (asgi_flow.py), after mitmproxy and the Bounds addon have read and bounded
it and after the TLS check, so nothing here reads an unbounded body or a token sent in the clear.

This package never imports mitmproxy: it is an ordinary Starlette app, and tests drive it with
any ASGI client.
"""
