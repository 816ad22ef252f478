"""The addon on the API listener, in-process: vendor routes go to the gate, the rest to the app.

No home here, so the ledger is "not configured": enough to see who answers each path.
"""

import asyncio

import pytest
from mitmproxy.flow import Error
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow
from prometheus_client.parser import text_string_to_metric_families

from keybrake_addon.addon import Keybrake, listener_vendor_route
from keybrake_addon.vendors import VENDORS

API_LISTENER = "reverse:http://127.0.0.1:9@127.0.0.1:8081"


def listener_flow(method: str, path: str, *, tls: bool = True, body: bytes = b""):
    flow = tflow.tflow()
    flow.client_conn.proxy_mode = ProxyMode.parse(API_LISTENER)
    flow.client_conn.timestamp_tls_setup = 1.0 if tls else None
    flow.request.method, flow.request.path = method, path
    flow.request.headers.clear()
    flow.request.headers["content-length"] = str(len(body))
    flow.request.raw_content = body
    return flow


@pytest.fixture
def keybrake():
    addon = Keybrake()
    with taddons.context(addon) as context:
        addon.context = context
        yield addon


def serve(addon: Keybrake, flow):
    addon.requestheaders(flow)
    asyncio.run(addon.request(flow))
    return flow.response


@pytest.mark.parametrize("path, vendor, rest", [
    ("/stripe/v1/charges", "stripe", "v1/charges"), ("/twilio/2010-04-01/Accounts", "twilio", "2010-04-01/Accounts"),
    ("/resend/emails", "resend", "emails"), ("/v1/payment_intents", "stripe", "v1/payment_intents"),
])
def test_vendor_routes_by_path_prefix(path, vendor, rest):
    assert listener_vendor_route(path) == (VENDORS[vendor], rest)


@pytest.mark.parametrize("path", ["/vault/keys", "/vault", "/metrics", "/healthz", "/ui/", "/", "/stripey/v1"])
def test_everything_else_is_the_apps(path):
    assert listener_vendor_route(path) is None


def test_the_app_answers_its_paths_and_a_vendor_route_gets_a_vendor_shaped_refusal(keybrake):
    assert serve(keybrake, listener_flow("GET", "/healthz")).status_code == 200
    vault = serve(keybrake, listener_flow("GET", "/vault/keys"))
    assert vault.status_code == 503 and vault.json()["error"]["message"] == "Keybrake is not configured (no home)."
    assert serve(keybrake, listener_flow("PUT", "/vault/spend")).headers["allow"] == "GET"
    refused = serve(keybrake, listener_flow("POST", "/stripe/v1/payment_intents"))
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "keybrake_unavailable"  # Stripe's shape
    families = {f.name: f for f in text_string_to_metric_families(keybrake.metrics.render()[0].decode())}
    counted = {tuple(sorted(s.labels.items())): s.value for s in families["keybrake_requests"].samples
               if s.name == "keybrake_requests_total"}
    assert counted[("decision", "keybrake_unavailable"), ("vendor", "stripe")] == 1


def test_with_tls_asked_for_only_health_crosses_in_the_clear(keybrake):
    keybrake.context.options.update(certs=["example.com=/dev/null"])  # the operator asked for TLS
    for path in ("/vault/keys", "/metrics", "/stripe/v1/charges", "/nothing"):
        answer = serve(keybrake, listener_flow("GET", path, tls=False))
        assert (answer.status_code, answer.json()["error"]["code"]) == (403, "tls_required"), path
    assert serve(keybrake, listener_flow("GET", "/healthz", tls=False)).status_code == 200


def test_a_declared_body_over_the_listeners_limit_is_refused_before_it_is_read(keybrake):
    big = listener_flow("POST", "/metrics", body=b"x" * (65 * 1024))
    keybrake.requestheaders(big)
    assert big.response.status_code == 413
    huge = listener_flow("POST", "/ui/sign-in")
    huge.request.headers["content-length"] = str(2 * 1024 * 1024)
    keybrake.requestheaders(huge)
    assert huge.error.msg == Error.KILLED_MESSAGE and huge.response is None  # closed, never read
    cut = listener_flow("POST", "/ui/sign-in")
    cut.request.headers["content-length"] = str(2 * 1024 * 1024)
    cut.kill()  # by the Bounds addon, which runs first
    keybrake.requestheaders(cut)  # a second kill would raise: mitmproxy logs that as an addon error
    assert cut.error.msg == Error.KILLED_MESSAGE and cut.response is None
    vendor = listener_flow("POST", "/stripe/v1/charges", body=b"x" * (65 * 1024))
    keybrake.requestheaders(vendor)
    assert vendor.response is None  # a vendor body: the Bounds addon holds it to the vendor limit


def test_metrics_port_options_are_checked(keybrake):
    from mitmproxy import exceptions

    with pytest.raises(exceptions.OptionsError, match="IP address"):
        keybrake.context.options.update(keybrake_metrics_host="metrics.example.com")
    with pytest.raises(exceptions.OptionsError, match="0 to 65535"):
        keybrake.context.options.update(keybrake_metrics_port=70000)
    keybrake.context.options.update(keybrake_metrics_host="::1", keybrake_metrics_port=0)
