"""A stdlib-only fake of Resend's email API (send, batch send, retrieve), for end-to-end tests.

It speaks Resend's wire format where a proxy looks: Bearer auth (401 when missing, 403 when
wrong), JSON bodies, the `{"statusCode", "message", "name"}` error shape the resend SDK maps to
its exceptions, batches of at most 100, and `Idempotency-Key` (1-256 characters): a repeat with
the same body gets the first 200 again without sending; another body gets a 409. Failed requests
are not saved, so they can be retried under the same key. `X-Request-Id` is this fake's own
choice of request-id header. The server plumbing is `_http.FakeServer`.
"""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from keybrake_addon.fakes._http import FakeServer, ReceivedRequest, Reply, VendorError, json_reply, run_main

__all__ = ["DEFAULT_API_KEY", "MAX_BATCH", "FakeResend", "ResendError", "main"]

DEFAULT_API_KEY = "re_fakeupstream"
MAX_BATCH = 100
MAX_RECIPIENTS = 50

Obj = dict[str, Any]


class ResendError(VendorError):
    def __init__(self, status: int, name: str, message: str) -> None:
        super().__init__(status, {"statusCode": status, "message": message, "name": name})


def _invalid(message: str) -> ResendError:
    return ResendError(422, "validation_error", message)


def _as_list(value: Any) -> list[Any]:
    return [] if value is None else value if isinstance(value, list) else [value]


def _check(email: Any) -> str | None:
    """Why Resend would refuse this email, or None."""
    if not isinstance(email, dict):
        return "The email must be a JSON object."
    for field in ("from", "to", "subject"):
        if not email.get(field):
            return f"Missing `{field}` field."
    if len(_as_list(email["to"])) > MAX_RECIPIENTS:
        return f"Too many recipients in the `to` field. The maximum is {MAX_RECIPIENTS}."
    return None


class FakeResend(FakeServer):
    """An in-process fake Resend server.

    Typical use::

        with FakeResend() as fake:
            resend.api_url, resend.api_key = fake.url, fake.api_key
            resend.Emails.send({"from": ..., "to": ..., "subject": ..., "html": ...})
            assert fake.emails_sent == 1
    """

    vendor = "Resend"
    request_id_header = "X-Request-Id"
    form_bodies = False  # JSON bodies: read them from `received[i].body` / `.json()`

    def __init__(self, api_key: str = DEFAULT_API_KEY, *, host: str = "127.0.0.1", port: int = 0,
                 latency_s: float = 0.0) -> None:
        super().__init__(host, port, latency_s)
        self.api_key = api_key
        self._emails: dict[str, Obj] = {}  # id -> email, in sending order
        # Idempotency-Key -> ((path, canonical JSON body), saved 200 reply)
        self._idempotency: dict[str, tuple[tuple[str, str], Reply]] = {}
        table: list[tuple[str, str, Callable[..., Obj]]] = [
            ("POST", r"/emails", self._send_one),
            ("POST", r"/emails/batch", self._send_batch),
            ("GET", r"/emails/([^/]+)", self._get_email),
        ]
        self._set_routes(table)

    # ----- observations for tests (copies, taken under the lock) -----------------------------

    @property
    def emails_sent(self) -> int:
        """Emails really sent: a batch of 3 counts 3, an idempotent replay 0."""
        return self._locked(lambda: len(self._emails))

    @property
    def emails(self) -> list[Obj]:
        """Every email sent, in order, as GET /emails/{id} returns it."""
        return self._locked(lambda: [dict(e) for e in self._emails.values()])

    # ----- request pipeline (called with the lock held) --------------------------------------

    def _new_request_id(self) -> str:
        return str(uuid.uuid4())

    def _unknown_route(self, method: str, path: str) -> ResendError:
        return ResendError(404, "not_found", "The requested endpoint does not exist.")

    def _dispatch(self, req: ReceivedRequest, request_id: str) -> Reply:
        scheme, _, token = req.authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ResendError(401, "missing_api_key", "Missing API key in the authorization header. Include "
                              "the following header Authorization: Bearer YOUR_API_KEY in the request.")
        if not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ResendError(403, "invalid_api_key", "API key is invalid")
        if req.method != "POST":
            return json_reply(200, self._route(req.method, req.path, req))
        try:
            fingerprint = (req.path, json.dumps(req.json(), sort_keys=True))
        except ValueError:
            raise _invalid("The request body is not valid JSON.") from None
        key = req.headers.get("idempotency-key")
        if key is not None and not 1 <= len(key) <= 256:
            raise ResendError(400, "invalid_idempotency_key", "The key must be between 1-256 chars.")
        if key is not None and (saved := self._idempotency.get(key)):
            if saved[0] != fingerprint:
                raise ResendError(409, "invalid_idempotent_request",
                                  "Same idempotency key used with a different request payload.")
            return saved[1]
        reply = json_reply(200, self._route(req.method, req.path, req))
        if key is not None:
            self._idempotency[key] = (fingerprint, reply)
        return reply

    # ----- endpoints -------------------------------------------------------------------------

    def _store(self, email: Obj) -> str:
        email_id = str(uuid.uuid4())
        self._emails[email_id] = {
            "object": "email", "id": email_id, "to": _as_list(email["to"]), "from": email["from"],
            "created_at": datetime.now(UTC).isoformat(), "subject": email["subject"],
            "html": email.get("html"), "text": email.get("text"), "bcc": _as_list(email.get("bcc")),
            "cc": _as_list(email.get("cc")), "reply_to": _as_list(email.get("reply_to")),
            "last_event": "sent", "scheduled_at": email.get("scheduled_at"), "tags": email.get("tags", [])}
        return email_id

    def _send_one(self, req: ReceivedRequest) -> Obj:
        email = req.json()
        if problem := _check(email):
            raise _invalid(problem)
        return {"id": self._store(email)}

    def _send_batch(self, req: ReceivedRequest) -> Obj:
        """Strict (the default) refuses the whole batch for one bad email; permissive sends the rest."""
        emails = req.json()
        if not isinstance(emails, list) or not emails:
            raise _invalid("The request body must be a non-empty array of emails.")
        if len(emails) > MAX_BATCH:
            raise _invalid(f"Too many emails in the batch. The maximum is {MAX_BATCH}.")
        errors = [{"index": i, "message": p} for i, e in enumerate(emails) if (p := _check(e))]
        if errors and req.headers.get("x-batch-validation", "strict") != "permissive":
            raise _invalid(f"emails[{errors[0]['index']}]: {errors[0]['message']}")
        bad = {e["index"] for e in errors}
        data = [{"id": self._store(e)} for i, e in enumerate(emails) if i not in bad]
        return {"data": data, "errors": errors} if errors else {"data": data}

    def _get_email(self, req: ReceivedRequest, email_id: str) -> Obj:
        if email_id not in self._emails:
            raise ResendError(404, "not_found", "Email not found")
        return self._emails[email_id]


def main(argv: list[str] | None = None) -> int:
    """Serve in the foreground until SIGINT/SIGTERM."""
    return run_main(FakeResend, 12113, argv, ("--api-key", {"default": DEFAULT_API_KEY}))


if __name__ == "__main__":
    raise SystemExit(main())
