"""Answer a mitmproxy flow with an ASGI app, in-process: the API listener's own surface.

Modelled on mitmproxy's `mitmproxy.addons.asgiapp.serve`, which does not fit as is:
- its scope says "HTTP"/"HTTPS" (upper case) from the request line, where ASGI wants the
  lower-case scheme the client really spoke: here, https exactly when TLS was established;
- its path is the raw target percent-quoted once more, where ASGI wants it decoded;
- on a failure it logs the exception's text and answers a plain-text 500: an exception's text
  could quote a header or a secret, so only its type and place are logged here.
The request body is handed over as received (never decompressed) and whole: mitmproxy has read
it within the Bounds addon's limits before the `request` hook runs. Responses are buffered
whole too (no streaming), which suits JSON, metrics text and HTML pages.
"""

import asyncio
import json
import logging
import traceback
from urllib.parse import unquote_to_bytes

from mitmproxy import http

logger = logging.getLogger("keybrake")

_FAILED = json.dumps({"error": {"code": "internal_error",
                                "message": "Keybrake hit an unexpected error; the proxy log says more."}}).encode()


def scope_of(flow: http.HTTPFlow) -> dict:
    request = flow.request
    raw_path, _, query = request.data.path.partition(b"?")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1" if request.http_version == "HTTP/1.1" else "1.0",
        "method": request.method.upper(),
        "scheme": "https" if flow.client_conn.tls_established else "http",
        "path": unquote_to_bytes(raw_path).decode("utf-8", "replace"),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": [(name.lower(), value) for name, value in request.headers.fields],
        "client": tuple(flow.client_conn.peername[:2]),
        "server": tuple(flow.client_conn.sockname[:2]) if flow.client_conn.sockname else None,
    }


async def serve(app, flow: http.HTTPFlow) -> None:
    """Run `app` on `flow` and set `flow.response` from what it sends."""
    done = asyncio.Event()
    body_sent = False
    started: dict | None = None
    chunks: list[bytes] = []

    async def receive() -> dict:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": flow.request.raw_content or b"", "more_body": False}
        await done.wait()  # the app asks again only to learn of a disconnect: the answer is complete by then
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        nonlocal started
        if message["type"] == "http.response.start":
            started = message
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    try:
        await app(scope_of(flow), receive, send)
    except Exception as failure:
        _log_failure(failure)
        if started is None:
            started, chunks = {"status": 500, "headers": [(b"content-type", b"application/json")]}, [_FAILED]
    finally:
        done.set()
    if started is None:
        _log_failure(RuntimeError("the app sent no response"))
        started, chunks = {"status": 500, "headers": [(b"content-type", b"application/json")]}, [_FAILED]
    flow.response = http.Response.make(started["status"], b"".join(chunks), list(started.get("headers", [])))


def _log_failure(failure: BaseException) -> None:
    frame = traceback.extract_tb(failure.__traceback__)[-1] if failure.__traceback__ else None
    where = f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" if frame else "?"
    logger.error("keybrake: unexpected %s in the API listener's app at %s", type(failure).__name__, where)
