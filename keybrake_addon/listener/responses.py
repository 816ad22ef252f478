"""Answers of the listener itself, in the vault API's error shape: {"error": {"code", "message"}}."""

import json

from starlette.responses import Response

from ..vendors.base import RenderedResponse


def json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return Response(body, status, {"content-type": "application/json", **(headers or {})})


def from_rendered(answer: RenderedResponse) -> Response:
    return Response(answer.body, answer.status, answer.headers)
