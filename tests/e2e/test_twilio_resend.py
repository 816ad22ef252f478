"""Twilio and Resend behind the gate, driven by the official twilio and resend SDKs."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import resend
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.rest import Client as TwilioClient

from support.fakes.fake_resend import FakeResend
from support.fakes.fake_twilio import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, FakeTwilio
from keybrake_addon.proxy_process import ProxyProcess

from .helpers import keybrake, keybrake_json

RESEND_SECRET = "re_" + "fakeupstream"
US = "+14155550100"


@pytest.fixture
def vendors(home, tmp_path, monkeypatch):
    keybrake(home, "secret", "set", "twilio", "--account-sid", DEFAULT_ACCOUNT_SID, stdin=DEFAULT_AUTH_TOKEN + "\n")
    keybrake(home, "secret", "set", "resend", stdin=RESEND_SECRET + "\n")
    with FakeTwilio() as twilio_fake, FakeResend(api_key=RESEND_SECRET) as resend_fake:
        proxy = ProxyProcess(home=home, log_path=tmp_path / "proxy.log",
                             upstreams=(f"twilio={twilio_fake.url}", f"resend={resend_fake.url}")).start()
        # Both SDKs use requests: HTTPS_PROXY and REQUESTS_CA_BUNDLE are all a worker sets.
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(home / "certs" / "keybrake-ca-bundle.pem"))
        monkeypatch.setattr(resend, "api_url", "https://api.resend.com")
        yield twilio_fake, resend_fake, proxy
        proxy.stop()


def issue(home, vendor, *args):
    return keybrake_json(home, "issue", "--vendor", vendor, *args)


def twilio_client(vault_key: str, account_sid: str = DEFAULT_ACCOUNT_SID) -> TwilioClient:
    return TwilioClient(account_sid, vault_key)


def test_twilio_message_swaps_credentials_and_is_audited(vendors, home):
    twilio_fake, _, _ = vendors
    key = issue(home, "twilio", "--daily-usd-cap", "1", "--allow", "POST /2010-04-01/Accounts/*/Messages.json",
                "--label", "run-sms")
    message = twilio_client(key["vault_key"]).messages.create(to=US, from_="+14155550199", body="Your code is 1234")
    assert message.sid.startswith("SM")
    (seen,) = twilio_fake.received
    assert seen.authorization == "Basic " + __import__("base64").b64encode(
        f"{DEFAULT_ACCOUNT_SID}:{DEFAULT_AUTH_TOKEN}".encode()).decode()
    (row,) = json.loads(keybrake(home, "audit", "--label", "run-sms", "--format", "json").stdout)
    assert (row["object_id"], row["decision"], row["status"]) == (message.sid, "allowed", 201)
    assert row["actual_usd"] == "0.0145"  # price still null at creation: the estimate stands


def test_twilio_cap_is_exact_under_30_parallel_sends(vendors, home):
    twilio_fake, _, _ = vendors
    key = issue(home, "twilio", "--daily-usd-cap", "0.10", "--allow", "POST /2010-04-01/Accounts/*/Messages.json")
    client = twilio_client(key["vault_key"])

    def send(i):
        try:
            return client.messages.create(to=US, from_="+14155550199", body=f"message {i}")
        except TwilioRestException as error:
            return error

    with ThreadPoolExecutor(max_workers=30) as pool:
        results = list(pool.map(send, range(30)))
    sent = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, TwilioRestException)]
    assert len(sent) == 6  # 6 x $0.0145 = $0.087; a 7th would be $0.1015
    assert len(refused) == 24 and {r.status for r in refused} == {429}
    assert "cap" in refused[0].msg and "$0.10" in refused[0].msg
    assert twilio_fake.messages_sent == 6
    assert keybrake_json(home, "keys", "show", key["key_id"])["spent_usd"] == "0.087"


def test_twilio_account_mismatch_is_refused(vendors, home):
    twilio_fake, _, _ = vendors
    key = issue(home, "twilio", "--daily-usd-cap", "1", "--allow-all")
    other_account = "AC" + "f" * 32
    with pytest.raises(TwilioRestException) as refused:
        twilio_client(key["vault_key"], other_account).messages.create(to=US, from_="+14155550199", body="hi")
    assert refused.value.status == 403
    assert other_account in refused.value.msg
    assert twilio_fake.hits == 0


def test_credential_endpoints_never_reach_the_vendor_even_for_allow_all_keys(vendors, home):
    # An Account resource carries its auth_token and a new API key comes back with its secret:
    # through either a worker would walk away with a real credential.
    twilio_fake, resend_fake, _ = vendors
    twilio_key = issue(home, "twilio", "--daily-usd-cap", "1", "--allow-all", "--allow-unpriced")
    client = twilio_client(twilio_key["vault_key"])
    for attempt in (lambda: client.api.v2010.accounts(DEFAULT_ACCOUNT_SID).fetch(),
                    lambda: client.api.v2010.accounts.list(),
                    lambda: client.api.v2010.accounts(DEFAULT_ACCOUNT_SID).new_keys.create()):
        with pytest.raises(TwilioException) as refused:  # a list page raises the base class
            attempt()
        assert "403" in str(refused.value) and "never forwards" in str(refused.value)
    resend.api_key = issue(home, "resend", "--daily-usd-cap", "1", "--allow-all", "--allow-unpriced")["vault_key"]
    with pytest.raises(resend.exceptions.ResendError) as refused_key:
        resend.ApiKeys.create({"name": "mine now"})
    assert "never forwards" in str(refused_key.value)
    assert twilio_fake.hits == 0 and resend_fake.hits == 0
    audit = json.loads(keybrake(home, "audit", "--format", "json").stdout)
    assert [row["decision"] for row in audit] == ["keybrake_credential_endpoint"] * 4
    assert all(row["duration_ms"] is not None and row["duration_ms"] >= 0 for row in audit)  # refusals timed too


def test_twilio_revoke_stops_the_next_send(vendors, home):
    key = issue(home, "twilio", "--daily-usd-cap", "1", "--allow-all")
    client = twilio_client(key["vault_key"])
    client.messages.create(to=US, from_="+14155550199", body="first")
    keybrake(home, "revoke", key["key_id"])
    with pytest.raises(TwilioRestException) as refused:
        client.messages.create(to=US, from_="+14155550199", body="second")
    assert refused.value.status == 401 and "revoked" in refused.value.msg


def test_resend_single_and_batch_are_counted_and_audited(vendors, home):
    _, resend_fake, _ = vendors
    key = issue(home, "resend", "--daily-usd-cap", "1", "--allow", "POST /emails", "--allow", "POST /emails/batch",
                "--label", "run-mail")
    resend.api_key = key["vault_key"]
    sent = resend.Emails.send({"from": "a@example.com", "to": "b@example.com", "subject": "hi", "text": "x"})
    batch = resend.Batch.send([{"from": "a@example.com", "to": f"b{i}@example.com", "subject": "hi", "text": "x"}
                               for i in range(3)])
    assert (resend_fake.received[0].authorization) == f"Bearer {RESEND_SECRET}"
    rows = json.loads(keybrake(home, "audit", "--label", "run-mail", "--format", "json").stdout)
    assert rows[0]["object_id"] == sent["id"]
    assert rows[1]["object_id"].split() == [item["id"] for item in batch["data"]]
    assert [r["actual_usd"] for r in rows] == ["0.0009", "0.0027"]
    assert resend_fake.emails_sent == 4


def test_resend_cap_is_exact_under_30_parallel_sends(vendors, home):
    _, resend_fake, _ = vendors
    key = issue(home, "resend", "--daily-usd-cap", "0.009", "--allow", "POST /emails")
    resend.api_key = key["vault_key"]

    def send(i):
        try:
            return resend.Emails.send({"from": "a@example.com", "to": f"u{i}@example.com", "subject": "s", "text": "x"})
        except resend.exceptions.ResendError as error:
            return error

    with ThreadPoolExecutor(max_workers=30) as pool:
        results = list(pool.map(send, range(30)))
    refused = [r for r in results if isinstance(r, resend.exceptions.RateLimitError)]
    assert len(refused) == 20 and resend_fake.emails_sent == 10
    assert "cap" in str(refused[0])
    assert keybrake_json(home, "keys", "show", key["key_id"])["spent_usd"] == "0.009"


def test_resend_revoke_and_idempotent_retry(vendors, home):
    _, resend_fake, _ = vendors
    key = issue(home, "resend", "--daily-usd-cap", "1", "--allow", "POST /emails")
    resend.api_key = key["vault_key"]
    email = {"from": "a@example.com", "to": "b@example.com", "subject": "s", "text": "x"}
    first = resend.Emails.send(email, options={"idempotency_key": "welcome-42"})
    again = resend.Emails.send(email, options={"idempotency_key": "welcome-42"})
    assert first["id"] == again["id"] and resend_fake.emails_sent == 1
    assert keybrake_json(home, "keys", "show", key["key_id"])["spent_usd"] == "0.0009"
    keybrake(home, "revoke", key["key_id"])
    with pytest.raises(resend.exceptions.InvalidApiKeyError) as refused:  # Resend's own class for a bad key
        resend.Emails.send(email)
    assert "revoked" in str(refused.value)
    last = json.loads(keybrake(home, "audit", "--key", key["key_id"], "--format", "json").stdout)[-1]
    assert (last["decision"], last["status"]) == ("keybrake_key_revoked", 403)  # what the client got


def test_reconcile_replaces_estimates_with_twilio_final_prices(vendors, home):
    twilio_fake, _, _ = vendors
    key = issue(home, "twilio", "--daily-usd-cap", "1", "--allow-all", "--label", "run-rec")
    client = twilio_client(key["vault_key"])
    sids = [client.messages.create(to=US, from_="+14155550199", body=f"m{i}").sid for i in range(2)]
    assert keybrake_json(home, "keys", "show", key["key_id"])["spent_usd"] == "0.029"  # 2 x the estimate

    pending = json.loads(keybrake(home, "reconcile", "--upstream", f"twilio={twilio_fake.url}", "--json").stdout)
    assert [(r["object_id"], r["note"]) for r in pending] == [(sid, "no final price yet") for sid in sids]

    twilio_fake.rate_messages("0.00790")  # Twilio has rated the messages
    preview = json.loads(keybrake(home, "reconcile", "--upstream", f"twilio={twilio_fake.url}", "--dry-run",
                                  "--json").stdout)
    assert [r["change_usd"] for r in preview] == ["-0.0066", "-0.0066"]
    assert keybrake_json(home, "keys", "show", key["key_id"])["spent_usd"] == "0.029"  # a dry run changes nothing

    done = json.loads(keybrake(home, "reconcile", "--upstream", f"twilio={twilio_fake.url}", "--json").stdout)
    assert [(r["final_usd"], r["note"]) for r in done] == [("0.0079", "corrected")] * 2
    assert keybrake_json(home, "keys", "show", key["key_id"])["spent_usd"] == "0.0158"
    rows = json.loads(keybrake(home, "audit", "--label", "run-rec", "--format", "json").stdout)
    assert sum(float(r["actual_usd"]) for r in rows) == pytest.approx(0.0158)
    again = json.loads(keybrake(home, "reconcile", "--upstream", f"twilio={twilio_fake.url}", "--json").stdout)
    assert again == []  # nothing left at an estimate


def test_resend_python_through_the_base_url_route(home, tmp_path, monkeypatch):
    """resend-python's `api_url` pointed at the API listener: no proxy, no CA."""
    keybrake(home, "secret", "set", "resend", stdin=RESEND_SECRET + "\n")
    with FakeResend(api_key=RESEND_SECRET) as resend_fake:
        proxy = ProxyProcess(home=home, log_path=tmp_path / "p.log", upstreams=(f"resend={resend_fake.url}",),
                             extra_args=("--api-port", "0")).start()
        try:
            for name in ("HTTPS_PROXY", "HTTP_PROXY", "REQUESTS_CA_BUNDLE"):
                monkeypatch.delenv(name, raising=False)
            monkeypatch.setattr(resend, "api_url", proxy.api_url + "/resend")
            key = issue(home, "resend", "--daily-usd-cap", "0.0018", "--allow", "POST /emails")
            resend.api_key = key["vault_key"]
            email = {"from": "a@example.com", "to": "b@example.com", "subject": "s", "text": "x"}
            sent = [resend.Emails.send(email)["id"] for _ in range(2)]
            with pytest.raises(resend.exceptions.RateLimitError):
                resend.Emails.send(email)
        finally:
            proxy.stop()
    assert [r.authorization for r in resend_fake.received] == [f"Bearer {RESEND_SECRET}"] * 2
    assert [r.path for r in resend_fake.received] == ["/emails"] * 2
    assert len(set(sent)) == 2 and resend_fake.emails_sent == 2


def test_a_call_priced_at_max_call_minutes_reaches_twilio_with_that_time_limit(home, tmp_path, monkeypatch):
    keybrake(home, "secret", "set", "twilio", "--account-sid", DEFAULT_ACCOUNT_SID, stdin=DEFAULT_AUTH_TOKEN + "\n")
    keybrake(home, "pricing", "set", "twilio.max_call_minutes", "5")
    key = issue(home, "twilio", "--daily-usd-cap", "1", "--allow", "POST /2010-04-01/Accounts/*/Calls.json")
    with FakeTwilio() as twilio_fake:
        proxy = ProxyProcess(home=home, log_path=tmp_path / "proxy.log", upstreams=(f"twilio={twilio_fake.url}",)).start()
        try:
            monkeypatch.setenv("HTTPS_PROXY", proxy.url)
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(home / "certs" / "keybrake-ca-bundle.pem"))
            client = twilio_client(key["vault_key"])
            call = client.calls.create(to=US, from_="+14155550199", twiml="<Response><Say>Your code is 1234</Say></Response>")
            with pytest.raises(TwilioRestException) as dialling:
                client.calls.create(to=US, from_="+14155550199", time_limit=60,
                                    twiml="<Response><Dial>+447700900123</Dial></Response>")
            with pytest.raises(TwilioRestException) as fetched:
                client.calls.create(to=US, from_="+14155550199", time_limit=60, url="https://example.com/twiml")
        finally:
            proxy.stop()
    assert call.sid.startswith("CA")
    (seen,) = twilio_fake.received  # the refused calls never reached Twilio
    assert seen.form["TimeLimit"] == "300"  # 5 minutes: Twilio's 4-hour default cannot apply
    assert keybrake_json(home, "keys", "show", key["key_id"])["spent_usd"] == "0.07"  # 5 x $0.014
    assert (dialling.value.status, fetched.value.status) == (403, 403)
    assert "Dial" in dialling.value.msg and "twilio.allow_call_url" in fetched.value.msg
