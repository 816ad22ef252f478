"""A stdlib-only fake of Twilio's 2010-04-01 REST API (Messages and Calls), for end-to-end tests.

It speaks Twilio's wire format where a proxy looks: HTTP Basic auth with the account SID and
auth token (or an API key SID and secret), form bodies, `.json` resource URIs, Twilio's error
shape (`code`, `message`, `more_info`, `status`), a 404 for another account's path, and a
`Twilio-Request-Id` on every reply. A message's `price` is null, as Twilio answers at creation,
unless the fake is given a per-segment price to report. The server plumbing is `_http.FakeServer`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import uuid
from collections.abc import Callable
from decimal import Decimal
from email.utils import formatdate
from typing import Any

from keybrake_addon.fakes._http import FakeServer, ReceivedRequest, Reply, VendorError, json_reply, run_main

__all__ = ["DEFAULT_ACCOUNT_SID", "DEFAULT_AUTH_TOKEN", "FakeTwilio", "TwilioError", "main"]

DEFAULT_ACCOUNT_SID = "AC" + "0" * 32
DEFAULT_AUTH_TOKEN = "0123456789abcdef" * 2
API_VERSION = "2010-04-01"
_BASE = rf"/{API_VERSION}/Accounts/([^/]+)"
_GSM_LIMITS, _UCS2_LIMITS = (160, 153), (70, 67)  # (one segment, each part of a longer one)

Obj = dict[str, Any]
Form = dict[str, str]
Price = Decimal | float | str | None


class TwilioError(VendorError):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(status, {"code": code, "message": message, "status": status,
                                  "more_info": f"https://www.twilio.com/docs/errors/{code}"})


def _sid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


def _segments(body: str) -> int:
    """A rough count: GSM-7 if all ASCII, else UCS-2; the proxy computes its own."""
    single, part = _GSM_LIMITS if body.isascii() else _UCS2_LIMITS
    return 1 if len(body) <= single else math.ceil(len(body) / part)


def _required(form: Form, code: int, message: str, *names: str) -> str:
    """The first of `names` present in the form, else Twilio's 400 with `code`."""
    for name in names:
        if form.get(name):
            return form[name]
    raise TwilioError(400, code, message)


class FakeTwilio(FakeServer):
    """An in-process fake Twilio server.

    Typical use::

        with FakeTwilio(price="0.0079") as fake:
            httpx.post(f"{fake.url}/2010-04-01/Accounts/{fake.account_sid}/Messages.json",
                       auth=(fake.account_sid, fake.auth_token), data={...})
            assert fake.messages_sent == 1
    """

    vendor = "Twilio"
    request_id_header = "Twilio-Request-Id"

    def __init__(self, account_sid: str = DEFAULT_ACCOUNT_SID, auth_token: str = DEFAULT_AUTH_TOKEN, *,
                 api_key_sid: str | None = None, api_key_secret: str | None = None,
                 host: str = "127.0.0.1", port: int = 0, price: Price = None, latency_s: float = 0.0) -> None:
        super().__init__(host, port, latency_s)
        self.account_sid, self.auth_token = account_sid, auth_token
        self.api_key_sid, self.api_key_secret = api_key_sid, api_key_secret
        self._price = price
        self._resources: dict[str, Obj] = {}  # sid -> message or call, for GET
        self._sent: list[Obj] = []
        self._calls: list[Obj] = []
        table: list[tuple[str, str, Callable[..., Obj]]] = [
            ("POST", rf"{_BASE}/Messages\.json", self._message_create),
            ("GET", rf"{_BASE}/Messages/([^/]+)\.json", self._fetch),
            ("POST", rf"{_BASE}/Calls\.json", self._call_create),
            ("GET", rf"{_BASE}/Calls/([^/]+)\.json", self._fetch),
        ]
        self._set_routes(table)

    # ----- observations for tests (copies, taken under the lock) -----------------------------

    @property
    def sent(self) -> list[Obj]:
        """Every message created, in order, as returned to the client."""
        return self._locked(lambda: [dict(m) for m in self._sent])

    @property
    def messages_sent(self) -> int:
        return self._locked(lambda: len(self._sent))

    @property
    def calls(self) -> list[Obj]:
        return self._locked(lambda: [dict(c) for c in self._calls])

    def set_price(self, price: Price) -> None:
        """The per-segment price to report on messages created from now on (None: null)."""
        with self._lock:
            self._price = price

    def rate_messages(self, price: Price) -> None:
        """Fill in the price of every message sent so far, as Twilio does some time after sending."""
        with self._lock:
            for msg in self._sent:
                msg["price"] = _message_price(price, int(msg["num_segments"]))

    # ----- request pipeline (called with the lock held) --------------------------------------

    def _new_request_id(self) -> str:
        return _sid("RQ")

    def _unknown_route(self, method: str, path: str) -> TwilioError:
        return TwilioError(404, 20404, f"The requested resource {path} was not found")

    def _authorized(self, auth: str) -> bool:
        scheme, _, cred = auth.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(cred.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        pairs = [(self.account_sid, self.auth_token)]
        if self.api_key_sid and self.api_key_secret:
            pairs.append((self.api_key_sid, self.api_key_secret))
        return any(hmac.compare_digest(f"{user}:{password}".encode(), f"{u}:{p}".encode()) for u, p in pairs)

    def _dispatch(self, req: ReceivedRequest, request_id: str) -> Reply:
        if not self._authorized(req.authorization):
            err = TwilioError(401, 20003, "Authenticate")
            return json_reply(401, err.body, (("WWW-Authenticate", 'Basic realm="Twilio API"'),))
        status = 201 if req.method == "POST" else 200
        return json_reply(status, self._route(req.method, req.path, req))

    # ----- resources -------------------------------------------------------------------------

    def _own(self, req: ReceivedRequest, account: str) -> Form:
        """The form, once the path's account is this fake's (Twilio: 404 for another account)."""
        if account != self.account_sid:
            raise self._unknown_route(req.method, req.path)
        return req.form

    def _common(self, prefix: str, kind: str, form: Form) -> Obj:
        sid = _sid(prefix)
        return {"sid": sid, "account_sid": self.account_sid, "to": form["To"], "from": form.get("From"),
                "status": "queued", "direction": "outbound-api", "api_version": API_VERSION,
                "price_unit": "USD", "date_created": formatdate(usegmt=True),
                "date_updated": formatdate(usegmt=True),
                "uri": f"/{API_VERSION}/Accounts/{self.account_sid}/{kind}/{sid}.json"}

    def _message_create(self, req: ReceivedRequest, account: str) -> Obj:
        form = self._own(req, account)
        _required(form, 21604, "A 'To' phone number is required.", "To")
        _required(form, 21603, "A 'From' phone number is required.", "From", "MessagingServiceSid")
        _required(form, 21602, "Message body is required.", "Body", "MediaUrl")
        body, media = form.get("Body", ""), bool(form.get("MediaUrl"))
        segments = _segments(body) if body else 1
        msg = self._common("MM" if media else "SM", "Messages", form)
        service = form.get("MessagingServiceSid")
        msg.update(body=body, num_segments=str(segments), num_media="1" if media else "0",
                   price=_message_price(self._price, segments),
                   error_code=None, error_message=None, date_sent=None, messaging_service_sid=service,
                   status="accepted" if service and not form.get("From") else "queued",
                   subresource_uris={"media": msg["uri"].removesuffix(".json") + "/Media.json"})
        self._resources[msg["sid"]] = msg
        self._sent.append(msg)
        return msg

    def _call_create(self, req: ReceivedRequest, account: str) -> Obj:
        form = self._own(req, account)
        _required(form, 21201, "No 'To' number is specified", "To")
        _required(form, 21213, "No 'From' number is specified", "From")
        _required(form, 21205, "Url parameter is required.", "Url", "Twiml", "ApplicationSid")
        call = self._common("CA", "Calls", form)
        call.update(price=None, duration=None, start_time=None, end_time=None, parent_call_sid=None,
                    phone_number_sid=None, answered_by=None, caller_name=None, forwarded_from=None,
                    to_formatted=form["To"], from_formatted=form["From"])
        self._resources[call["sid"]] = call
        self._calls.append(call)
        return call

    def _fetch(self, req: ReceivedRequest, account: str, sid: str) -> Obj:
        self._own(req, account)
        if sid not in self._resources:
            raise self._unknown_route(req.method, req.path)
        return self._resources[sid]


def main(argv: list[str] | None = None) -> int:
    """Serve in the foreground until SIGINT/SIGTERM."""
    return run_main(FakeTwilio, 12112, argv, ("--account-sid", {"default": DEFAULT_ACCOUNT_SID}),
                    ("--auth-token", {"default": DEFAULT_AUTH_TOKEN}), ("--api-key-sid", {}),
                    ("--api-key-secret", {}), ("--price", {"help": "per-segment price, e.g. 0.0079"}))


def _message_price(per_segment: Price, segments: int) -> str | None:
    """Twilio's form: a negative decimal string for the whole message, or null while unrated."""
    return None if per_segment is None else f"-{abs(Decimal(str(per_segment))) * segments:.5f}"


if __name__ == "__main__":
    raise SystemExit(main())
