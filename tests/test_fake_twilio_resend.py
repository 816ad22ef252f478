"""Tests for the stdlib fake Twilio and Resend servers, driven by raw httpx and the official SDKs.

The twilio SDK has no base-URL setting, so its test routes the SDK's own HTTP client to the fake
by rewriting the host; resend-python reads the module global `resend.api_url`.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import resend
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # the package is not installed in every test environment
    sys.path.insert(0, str(REPO_ROOT))

from support.fakes.fake_resend import DEFAULT_API_KEY, FakeResend  # noqa: E402
from support.fakes.fake_twilio import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, FakeTwilio  # noqa: E402

AC, TOKEN = DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN
OTHER_AC = "AC" + "1" * 32
HTTP = httpx.Client(timeout=10)


@pytest.fixture(scope="module", autouse=True)
def _close_http() -> Iterator[None]:
    yield
    HTTP.close()


@pytest.fixture
def twilio_fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as f:
        yield f


@pytest.fixture
def resend_fake() -> Iterator[FakeResend]:
    with FakeResend() as f:
        yield f


def messages_url(fake: FakeTwilio, account: str = AC) -> str:
    return f"{fake.url}/2010-04-01/Accounts/{account}/Messages.json"


def sms(fake: FakeTwilio, data: dict[str, str], *, auth: tuple[str, str] = (AC, TOKEN),
        account: str = AC) -> httpx.Response:
    return HTTP.post(messages_url(fake, account), data=data, auth=auth)


SMS = {"To": "+15551230001", "From": "+15559990000", "Body": "hello"}


# ----- Twilio ---------------------------------------------------------------------------------


def test_twilio_message_fields_price_null_by_default(twilio_fake: FakeTwilio) -> None:
    r = sms(twilio_fake, SMS)
    assert r.status_code == 201
    msg = r.json()
    assert msg["sid"].startswith("SM") and len(msg["sid"]) == 34
    assert r.headers["twilio-request-id"].startswith("RQ") and len(r.headers["twilio-request-id"]) == 34
    assert (msg["account_sid"], msg["to"], msg["from"], msg["body"]) == (AC, "+15551230001", "+15559990000", "hello")
    assert (msg["status"], msg["num_segments"], msg["num_media"]) == ("queued", "1", "0")
    assert (msg["price"], msg["price_unit"], msg["direction"]) == (None, "USD", "outbound-api")
    assert (msg["api_version"], msg["error_code"], msg["error_message"]) == ("2010-04-01", None, None)
    assert msg["uri"] == f"/2010-04-01/Accounts/{AC}/Messages/{msg['sid']}.json"
    assert msg["date_created"].endswith("GMT")
    fetched = HTTP.get(f"{twilio_fake.url}{msg['uri']}", auth=(AC, TOKEN))
    assert fetched.status_code == 200 and fetched.json() == msg
    assert twilio_fake.messages_sent == 1 and twilio_fake.sent == [msg]
    assert twilio_fake.received[0].form == SMS


def test_twilio_price_segments_media_and_set_price() -> None:
    with FakeTwilio(price="0.0079") as fake:
        assert sms(fake, SMS).json()["price"] == "-0.00790"
        long = sms(fake, {**SMS, "Body": "x" * 161}).json()
        assert (long["num_segments"], long["price"]) == ("2", "-0.01580")  # price is per segment
        assert sms(fake, {**SMS, "Body": "é" * 71}).json()["num_segments"] == "2"
        mms = sms(fake, {"To": SMS["To"], "From": SMS["From"], "MediaUrl": "https://x/cat.png"}).json()
        assert mms["sid"].startswith("MM") and (mms["num_media"], mms["body"]) == ("1", "")
        fake.set_price(None)
        assert sms(fake, SMS).json()["price"] is None
        svc = sms(fake, {"To": SMS["To"], "MessagingServiceSid": "MG" + "2" * 32, "Body": "hi"}).json()
        assert (svc["messaging_service_sid"], svc["from"], svc["status"]) == ("MG" + "2" * 32, None, "accepted")
        assert fake.messages_sent == 6


def test_twilio_auth_failures_and_api_keys() -> None:
    with FakeTwilio(api_key_sid="SK" + "3" * 32, api_key_secret="keysecret") as fake:
        for auth in [(AC, "wrong"), ("SK" + "3" * 32, TOKEN), ("nobody", "x")]:
            r = sms(fake, SMS, auth=auth)
            assert r.status_code == 401
            assert r.json() == {"code": 20003, "message": "Authenticate", "status": 401,
                                "more_info": "https://www.twilio.com/docs/errors/20003"}
            assert r.headers["twilio-request-id"].startswith("RQ")
        assert HTTP.post(messages_url(fake), data=SMS).status_code == 401  # no credentials at all
        assert HTTP.post(messages_url(fake), data=SMS, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401
        assert sms(fake, SMS, auth=("SK" + "3" * 32, "keysecret")).status_code == 201
        assert fake.messages_sent == 1 and fake.hits == 6


def test_twilio_other_account_is_404_and_validation_400s(twilio_fake: FakeTwilio) -> None:
    r = sms(twilio_fake, SMS, account=OTHER_AC)
    assert r.status_code == 404
    assert (r.json()["code"], r.json()["status"]) == (20404, 404)
    assert OTHER_AC in r.json()["message"]
    missing_to = sms(twilio_fake, {"From": SMS["From"], "Body": "x"})
    assert (missing_to.status_code, missing_to.json()["code"]) == (400, 21604)
    assert missing_to.json()["message"] == "A 'To' phone number is required."
    no_body = sms(twilio_fake, {"To": SMS["To"], "From": SMS["From"]})
    assert (no_body.status_code, no_body.json()["code"]) == (400, 21602)
    unknown = HTTP.get(f"{twilio_fake.url}/2010-04-01/Accounts/{AC}/Messages/SM{'f' * 32}.json", auth=(AC, TOKEN))
    assert (unknown.status_code, unknown.json()["code"]) == (404, 20404)
    assert twilio_fake.messages_sent == 0


def test_twilio_calls(twilio_fake: FakeTwilio) -> None:
    url = f"{twilio_fake.url}/2010-04-01/Accounts/{AC}/Calls.json"
    r = HTTP.post(url, auth=(AC, TOKEN), data={"To": "+15551230001", "From": "+15559990000",
                                               "Twiml": "<Response><Say>hi</Say></Response>", "TimeLimit": "60"})
    assert r.status_code == 201
    call = r.json()
    assert call["sid"].startswith("CA") and (call["status"], call["price"], call["price_unit"]) == ("queued", None, "USD")
    assert HTTP.get(f"{twilio_fake.url}{call['uri']}", auth=(AC, TOKEN)).json()["sid"] == call["sid"]
    no_url = HTTP.post(url, auth=(AC, TOKEN), data={"To": "+15551230001", "From": "+15559990000"})
    assert no_url.status_code == 400
    assert len(twilio_fake.calls) == 1 and twilio_fake.messages_sent == 0


class _ToFake(TwilioHttpClient):
    """The SDK's own HTTP client, with api.twilio.com swapped for the fake's URL."""

    def __init__(self, base: str) -> None:
        super().__init__()
        self.base = base

    def request(self, method: str, url: str, *args: object, **kwargs: object) -> Response:  # type: ignore[override]
        return super().request(method, url.replace("https://api.twilio.com", self.base), *args, **kwargs)  # type: ignore[arg-type]


def test_twilio_official_sdk_against_the_fake() -> None:
    with FakeTwilio(price="0.0079") as fake:
        client = Client(AC, TOKEN, http_client=_ToFake(fake.url))
        msg = client.messages.create(to="+15551230001", from_="+15559990000", body="via sdk")
        assert msg.sid is not None and msg.sid.startswith("SM")
        assert (msg.price, msg.num_segments, msg.status) == ("-0.00790", "1", "queued")
        assert client.messages(msg.sid).fetch().body == "via sdk"
        call = client.calls.create(to="+15551230001", from_="+15559990000", url="https://x/twiml")
        assert call.sid is not None and call.sid.startswith("CA")
        with pytest.raises(TwilioRestException) as ei:
            Client(AC, "bad", http_client=_ToFake(fake.url)).messages.create(to="+1", from_="+2", body="x")
        assert (ei.value.status, ei.value.code) == (401, 20003)


# ----- Resend ---------------------------------------------------------------------------------

EMAIL = {"from": "Acme <a@acme.test>", "to": "b@example.com", "subject": "Hi", "html": "<p>hi</p>"}
BEARER = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}


def post(fake: FakeResend, path: str, payload: object, **headers: str) -> httpx.Response:
    return HTTP.post(fake.url + path, json=payload, headers={**BEARER, **headers})


def test_resend_send_and_get(resend_fake: FakeResend) -> None:
    r = post(resend_fake, "/emails", EMAIL)
    assert r.status_code == 200 and set(r.json()) == {"id"}
    email_id = r.json()["id"]
    assert len(email_id) == 36 and email_id.count("-") == 4
    assert r.headers["x-request-id"]
    got = HTTP.get(f"{resend_fake.url}/emails/{email_id}", headers=BEARER).json()
    assert (got["object"], got["id"], got["to"], got["subject"]) == ("email", email_id, ["b@example.com"], "Hi")
    assert HTTP.get(f"{resend_fake.url}/emails/nope", headers=BEARER).status_code == 404
    assert resend_fake.emails_sent == 1
    assert resend_fake.received[0].json() == EMAIL and resend_fake.received[0].form == {}


def test_resend_auth_and_validation(resend_fake: FakeResend) -> None:
    missing = HTTP.post(resend_fake.url + "/emails", json=EMAIL)
    assert missing.status_code == 401
    assert (missing.json()["statusCode"], missing.json()["name"]) == (401, "missing_api_key")
    assert missing.json()["message"].startswith("Missing API key in the authorization header")
    wrong = HTTP.post(resend_fake.url + "/emails", json=EMAIL, headers={"Authorization": "Bearer re_wrong"})
    assert wrong.status_code == 403
    assert wrong.json() == {"statusCode": 403, "message": "API key is invalid", "name": "invalid_api_key"}
    for field in ("from", "to", "subject"):
        bad = post(resend_fake, "/emails", {k: v for k, v in EMAIL.items() if k != field})
        assert bad.status_code == 422
        assert bad.json() == {"statusCode": 422, "name": "validation_error", "message": f"Missing `{field}` field."}
    assert post(resend_fake, "/emails/batch", [EMAIL] * 101).status_code == 422
    strict = post(resend_fake, "/emails/batch", [EMAIL, {"from": "a@acme.test"}])
    assert strict.status_code == 422 and "emails[1]" in strict.json()["message"]
    assert resend_fake.emails_sent == 0
    loose = post(resend_fake, "/emails/batch", [EMAIL, {"from": "a@acme.test"}], **{"x-batch-validation": "permissive"})
    assert len(loose.json()["data"]) == 1 and loose.json()["errors"][0]["index"] == 1
    assert resend_fake.emails_sent == 1


def test_resend_batch(resend_fake: FakeResend) -> None:
    r = post(resend_fake, "/emails/batch", [EMAIL, {**EMAIL, "to": ["c@example.com", "d@example.com"]}, EMAIL])
    assert r.status_code == 200
    ids = [d["id"] for d in r.json()["data"]]
    assert len(set(ids)) == 3 and resend_fake.emails_sent == 3
    assert post(resend_fake, "/emails/batch", [EMAIL] * 100).status_code == 200
    assert resend_fake.emails_sent == 103


def test_resend_idempotent_repeat_and_conflict(resend_fake: FakeResend) -> None:
    first = post(resend_fake, "/emails", EMAIL, **{"Idempotency-Key": "welcome/1"})
    again = post(resend_fake, "/emails", EMAIL, **{"Idempotency-Key": "welcome/1"})
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert first.headers["x-request-id"] != again.headers["x-request-id"]
    assert "idempotent-replayed" not in again.headers
    conflict = post(resend_fake, "/emails", {**EMAIL, "subject": "Other"}, **{"Idempotency-Key": "welcome/1"})
    assert conflict.status_code == 409 and conflict.json()["name"] == "invalid_idempotent_request"
    batch = [EMAIL, EMAIL]
    b1 = post(resend_fake, "/emails/batch", batch, **{"Idempotency-Key": "b"})
    assert post(resend_fake, "/emails/batch", batch, **{"Idempotency-Key": "b"}).json() == b1.json()
    bad = post(resend_fake, "/emails", {"to": "x@y.z"}, **{"Idempotency-Key": "k"})
    assert bad.status_code == 422  # failures are not saved: the key is still free
    assert post(resend_fake, "/emails", EMAIL, **{"Idempotency-Key": "k"}).status_code == 200
    assert resend_fake.emails_sent == 1 + 2 + 1


def test_resend_concurrent_duplicates_send_once(resend_fake: FakeResend) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(lambda _: post(resend_fake, "/emails", EMAIL, **{"Idempotency-Key": "dup"}), range(16)))
    assert {r.json()["id"] for r in replies} == {replies[0].json()["id"]}
    assert resend_fake.emails_sent == 1 and resend_fake.hits == 16


@pytest.fixture
def resend_sdk(resend_fake: FakeResend) -> Iterator[FakeResend]:
    saved = resend.api_key, resend.api_url
    resend.api_key, resend.api_url = resend_fake.api_key, resend_fake.url
    try:
        yield resend_fake
    finally:
        resend.api_key, resend.api_url = saved


def test_resend_official_sdk_against_the_fake(resend_sdk: FakeResend) -> None:
    sent = resend.Emails.send({"from": "a@acme.test", "to": ["b@example.com"], "subject": "Hi", "html": "x"})
    assert resend.Emails.get(sent["id"])["subject"] == "Hi"
    again = resend.Emails.send({"from": "a@acme.test", "to": "b@example.com", "subject": "Hi", "html": "x"},
                               options={"idempotency_key": "sdk-1"})
    replay = resend.Emails.send({"from": "a@acme.test", "to": "b@example.com", "subject": "Hi", "html": "x"},
                                options={"idempotency_key": "sdk-1"})
    assert again["id"] == replay["id"]
    batch = resend.Batch.send([{"from": "a@acme.test", "to": "c@example.com", "subject": "B", "text": "t"}] * 3)
    assert len(batch["data"]) == 3
    assert resend_sdk.emails_sent == 1 + 1 + 3
    with pytest.raises(resend.exceptions.ValidationError):
        resend.Emails.send({"from": "a@acme.test", "to": "b@example.com", "subject": "", "html": "x"})
    resend.api_key = "re_wrong"
    with pytest.raises(resend.exceptions.InvalidApiKeyError):
        resend.Emails.send({"from": "a@acme.test", "to": "b@example.com", "subject": "Hi", "html": "x"})


# ----- shared plumbing ------------------------------------------------------------------------


@pytest.mark.parametrize("make", [FakeTwilio, FakeResend])
def test_keep_alive_reuses_one_connection(make: type[FakeTwilio] | type[FakeResend]) -> None:
    with make() as fake:
        conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
        try:
            conn.request("POST", "/nope", body=b"{}", headers={"Authorization": "Bearer nope"})
            resp = conn.getresponse()
            assert resp.status in (401, 403) and resp.getheader("Content-Length")
            resp.read()
            sock = conn.sock
            conn.request("GET", "/nope")
            resp = conn.getresponse()
            assert resp.status == 401
            resp.read()
            assert sock is not None and conn.sock is sock
        finally:
            conn.close()
        assert fake.hits == 2
        assert [r.method for r in fake.received] == ["POST", "GET"]
        assert fake.received[0].headers["authorization"] == "Bearer nope"
        fake.clear_received()
        assert fake.received == [] and fake.hits == 2


@pytest.mark.parametrize(("module", "vendor", "check"), [
    ("fake_twilio", "twilio", lambda url: HTTP.post(f"{url}/2010-04-01/Accounts/{AC}/Messages.json",
                                                    data=SMS, auth=(AC, "tok")).status_code == 201),
    ("fake_resend", "resend", lambda url: HTTP.post(f"{url}/emails", json=EMAIL,
                                                    headers={"Authorization": "Bearer re_cli"}).status_code == 200),
])
def test_module_main_prints_url_and_stops_on_sigterm(module: str, vendor: str, check) -> None:  # noqa: ANN001
    secret = ["--auth-token", "tok"] if vendor == "twilio" else ["--api-key", "re_cli"]
    path = [str(REPO_ROOT), str(REPO_ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    proc = subprocess.Popen([sys.executable, "-m", f"support.fakes.{module}", "--port", "0", *secret],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith(f"fake {vendor} listening on http://127.0.0.1:")
        assert check(line.rsplit(" ", 1)[1])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
