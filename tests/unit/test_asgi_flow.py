"""A mitmproxy flow answered by an ASGI app in-process (keybrake_addon/asgi_flow.py)."""

import asyncio
import logging

from mitmproxy.test import tflow

from keybrake_addon.asgi_flow import serve


class Recorder:
    """An ASGI app that keeps what it was given and answers with a fixed response."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.scope, self.body, self.fail = None, None, fail

    async def __call__(self, scope, receive, send):
        self.scope = scope
        self.body = (await receive())["body"]
        if self.fail is not None:
            raise self.fail
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"content-type", b"application/json"), (b"x-two", b"1"), (b"x-two", b"2")]})
        await send({"type": "http.response.body", "body": b'{"ok"', "more_body": True})
        await send({"type": "http.response.body", "body": b": true}"})


def flow_to(target: bytes, *, tls: bool, body: bytes = b"", headers=()):
    flow = tflow.tflow()
    flow.request.method, flow.request.data.path = "POST", target
    flow.request.headers.clear()
    for name, value in headers:
        flow.request.headers.add(name, value)
    flow.request.raw_content = body
    flow.client_conn.timestamp_tls_setup = 1.0 if tls else None
    return flow


def test_the_scope_is_what_asgi_says_and_the_answer_is_whole():
    app = Recorder()
    flow = flow_to(b"/vault/keys/kbk%5F1?label=a%26b&x=%2B", tls=False, body=b'{"a": 1}',
                   headers=[("Authorization", "Bearer kba_x"), ("X-Many", "1"), ("X-Many", "2")])
    asyncio.run(serve(app, flow))
    scope = app.scope
    assert (scope["method"], scope["scheme"], scope["http_version"]) == ("POST", "http", "1.1")
    assert scope["path"] == "/vault/keys/kbk_1" and scope["raw_path"] == b"/vault/keys/kbk%5F1"
    assert scope["query_string"] == b"label=a%26b&x=%2B"  # still percent-encoded: the app parses it once
    assert scope["headers"] == [(b"authorization", b"Bearer kba_x"), (b"x-many", b"1"), (b"x-many", b"2")]
    assert scope["client"] == ("127.0.0.1", 22) and app.body == b'{"a": 1}'
    assert (flow.response.status_code, flow.response.content) == (201, b'{"ok": true}')
    assert flow.response.headers.get_all("x-two") == ["1", "2"]
    assert flow.response.headers["content-length"] == "12"


def test_https_exactly_when_the_client_spoke_tls_and_the_body_is_never_decompressed():
    app = Recorder()
    flow = flow_to(b"/vault/keys", tls=True, body=b"\x1f\x8bnot really gzip", headers=[("Content-Encoding", "gzip")])
    asyncio.run(serve(app, flow))
    assert app.scope["scheme"] == "https" and app.body == b"\x1f\x8bnot really gzip"


def test_a_failing_app_is_a_json_500_and_the_log_has_no_exception_text(caplog):
    flow = flow_to(b"/ui/boom", tls=True)
    with caplog.at_level(logging.ERROR, logger="keybrake"):
        asyncio.run(serve(Recorder(fail=RuntimeError("sk_live_" + "s" * 24)), flow))
    assert flow.response.status_code == 500 and flow.response.headers["content-type"] == "application/json"
    assert "RuntimeError" in caplog.text and "sk_live_" not in caplog.text


def test_an_app_that_sends_nothing_is_a_500():
    async def silent(scope, receive, send):
        return None

    flow = flow_to(b"/x", tls=False)
    asyncio.run(serve(silent, flow))
    assert flow.response.status_code == 500
