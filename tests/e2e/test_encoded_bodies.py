"""An encoded request body is refused for every vendor: the gate prices the bytes the vendor gets.

Each attack below was priced from one reading of the body while the vendor got another: a gzip
member followed by more form (the decoder stops at the member's end), a quoted-printable body
(Python's codecs decode names no vendor knows), two Content-Encoding lines (the gate's dict kept
the last), and a gzip transfer coding that was forwarded as sent.
"""

import base64
import gzip
import ssl
import struct
import zlib

import httpx
import pytest

from support.fakes.fake_resend import FakeResend
from support.fakes.fake_twilio import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, FakeTwilio
from keybrake_addon.proxy_process import ProxyProcess

from .helpers import keybrake, keybrake_json
from .raw_sockets import exchange_through_proxy

RESEND_SECRET = "re_" + "fakeupstream"
CALLS = f"/2010-04-01/Accounts/{DEFAULT_ACCOUNT_SID}/Calls.json"
MESSAGES = f"/2010-04-01/Accounts/{DEFAULT_ACCOUNT_SID}/Messages.json"
SAY_ONLY = (b"To=%2B14155550100&From=%2B14155550199&TimeLimit=60"
            b"&Twiml=%3CResponse%3E%3CSay%3Ehi%3C%2FSay%3E%3C%2FResponse%3E")
# What the fake (like a server that does not decode request bodies) reads after the gzip member.
FOUR_HOURS_OF_FETCHED_TWIML = (b"&To=%2B14155550100&From=%2B14155550199&TimeLimit=14400"
                               b"&Url=https%3A%2F%2Fattacker.example%2Fdial.xml")


@pytest.fixture
def gated(home, tmp_path, fake_stripe):
    keybrake(home, "secret", "set", "twilio", "--account-sid", DEFAULT_ACCOUNT_SID, stdin=DEFAULT_AUTH_TOKEN + "\n")
    keybrake(home, "secret", "set", "resend", stdin=RESEND_SECRET + "\n")
    with FakeTwilio() as twilio_fake, FakeResend(api_key=RESEND_SECRET) as resend_fake:
        proxy = ProxyProcess(home=home, log_path=tmp_path / "proxy.log", upstreams=(
            f"twilio={twilio_fake.url}", f"resend={resend_fake.url}", f"stripe={fake_stripe.url}")).start()
        yield proxy, {"twilio": twilio_fake, "resend": resend_fake}
        proxy.stop()


def gzip_with_comment(payload: bytes, comment: bytes) -> bytes:
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    header = b"\x1f\x8b\x08\x10" + b"\0\0\0\0" + b"\x00\xff" + comment + b"\x00"  # FCOMMENT set
    body = header + deflate.compress(payload) + deflate.flush() + struct.pack("<II", zlib.crc32(payload), len(payload))
    assert gzip.decompress(body) == payload
    return body


def twilio_auth(vault_key: str) -> str:
    return "Basic " + base64.b64encode(f"{DEFAULT_ACCOUNT_SID}:{vault_key}".encode()).decode()


def send(proxy, home, url: str, body: bytes, headers: list[tuple[str, str]]) -> httpx.Response:
    context = ssl.create_default_context(cafile=str(home / "certs" / "keybrake-ca.pem"))
    with httpx.Client(proxy=proxy.url, verify=context) as client:
        return client.post(url, content=body, headers=headers)


def test_a_gzip_member_with_more_form_after_it_is_refused(gated, home):
    proxy, fakes = gated
    key = keybrake_json(home, "issue", "--vendor", "twilio", "--total-usd-cap", "0.02", "--allow", "POST " + CALLS)
    answer = send(proxy, home, "https://api.twilio.com" + CALLS, gzip.compress(SAY_ONLY) + FOUR_HOURS_OF_FETCHED_TWIML,
                  [("authorization", twilio_auth(key["vault_key"])), ("content-encoding", "gzip"),
                   ("content-type", "application/x-www-form-urlencoded")])
    assert (answer.status_code, answer.headers["x-keybrake-refusal"]) == (400, "keybrake_invalid_request")
    assert "Content-Encoding: gzip" in answer.json()["message"]
    assert fakes["twilio"].received == []


def test_a_body_in_a_coding_only_python_knows_is_refused(gated, home):
    proxy, fakes = gated
    key = keybrake_json(home, "issue", "--vendor", "resend", "--total-usd-cap", "0.001", "--allow", "POST /emails")
    # Raw: 50 recipients. Quoted-printable decoded, a second "cc" key (the last wins) leaves one.
    cc = b",".join(b'"r%d@example.com"' % i for i in range(49))
    body = (b'{"from":"a@example.com","subject":"s","text":"t","to":"one@example.com","cc":[' + cc +
            b'],"x":"=22,=22cc=22:[],=22y=22:=22"}')
    answer = send(proxy, home, "https://api.resend.com/emails", body,
                  [("authorization", f"Bearer {key['vault_key']}"), ("content-type", "application/json"),
                   ("content-encoding", "quopri")])
    assert (answer.status_code, answer.headers["x-keybrake-refusal"]) == (400, "keybrake_invalid_request")
    assert [r for r in fakes["resend"].received if r.path == "/emails"] == []


def test_two_content_encoding_lines_are_refused(gated, home, fake_stripe):
    proxy, _ = gated
    key = keybrake_json(home, "issue", "--vendor", "stripe", "--total-usd-cap", "5", "--allow", "POST /v1/payment_intents")
    answer = send(proxy, home, "https://api.stripe.com/v1/payment_intents", b"amount=100&currency=usd",
                  [("authorization", f"Bearer {key['vault_key']}"),
                   ("content-type", "application/x-www-form-urlencoded"),
                   ("content-encoding", "gzip"), ("content-encoding", "identity")])
    assert (answer.status_code, answer.headers["x-keybrake-refusal"]) == (400, "keybrake_invalid_request")
    assert "content-encoding" in answer.json()["error"]["message"]
    assert fake_stripe.hits == 0


def test_an_identity_coding_is_a_plain_body_and_goes_through(gated, home):
    proxy, fakes = gated
    key = keybrake_json(home, "issue", "--vendor", "twilio", "--total-usd-cap", "0.02", "--allow", "POST " + CALLS)
    answer = send(proxy, home, "https://api.twilio.com" + CALLS, SAY_ONLY,
                  [("authorization", twilio_auth(key["vault_key"])), ("content-encoding", "identity"),
                   ("content-type", "application/x-www-form-urlencoded")])
    assert answer.status_code == 201, answer.text
    (seen,) = fakes["twilio"].received
    assert seen.form["TimeLimit"] == "60"


def test_a_gzip_transfer_coding_is_refused(gated, home):
    proxy, fakes = gated
    key = keybrake_json(home, "issue", "--vendor", "twilio", "--total-usd-cap", "0.05", "--allow", "POST " + MESSAGES)
    # Read raw, a one-segment form (in the gzip header's comment field); gunzipped, 11 segments.
    body = gzip_with_comment(b"To=%2B14155550100&From=%2B14155550199&Body=" + b"x" * 1600,
                             comment=b"&To=%2B14155550100&From=%2B14155550199&Body=hi&z=")
    head = exchange_through_proxy(proxy, home, "api.twilio.com", (
        f"POST {MESSAGES} HTTP/1.1\r\nHost: api.twilio.com\r\n"
        f"Authorization: {twilio_auth(key['vault_key'])}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        "Transfer-Encoding: gzip, chunked\r\n\r\n").encode() + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
    assert head.startswith("http/1.1 400") and "x-keybrake-refusal: keybrake_invalid_request" in head
    assert fakes["twilio"].received == []
