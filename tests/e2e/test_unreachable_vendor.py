"""A vendor that cannot be reached: nothing is counted, the log says which and why, the audit row has a status."""

import pytest
import stripe

from keybrake_addon.ledger.base import AuditFilter
from keybrake_addon.proxy import free_port
from keybrake_addon.proxy_process import ProxyProcess

from .helpers import keybrake_json


@pytest.fixture
def proxy_to_nowhere(home, tmp_path):
    closed = free_port("127.0.0.1")  # nothing listens there: the connection is refused
    running = ProxyProcess(home=home, upstreams=(f"stripe=http://127.0.0.1:{closed}",),
                           log_path=tmp_path / "proxy.log").start()
    running.closed_port = closed
    yield running
    running.stop()


def test_an_unreachable_vendor_is_logged_and_audited_and_costs_nothing(proxy_to_nowhere, stripe_client_for_proxy,
                                                                       issue, home, ledger_of):
    key = issue("--total-usd-cap", "100", "--allow", "POST /v1/payment_intents")
    client = stripe_client_for_proxy(proxy_to_nowhere)(key["vault_key"])
    with pytest.raises(stripe.APIError):
        client.v1.payment_intents.create(params={"amount": 5000, "currency": "usd"})

    shown = keybrake_json(home, "keys", "show", key["key_id"])
    assert (shown["spent_usd"], shown["reserved_usd"]) == ("0.00", "0.00")  # nothing was sent: the hold is released
    (row,) = ledger_of().audit_rows(AuditFilter(key_id=key["key_id"]))
    assert (row["decision"], row["status"], row["outcome"]) == ("allowed", 502, "released")
    assert f"keybrake: cannot reach stripe at 127.0.0.1:{proxy_to_nowhere.closed_port}" in proxy_to_nowhere.log_text()
    assert key["vault_key"] not in proxy_to_nowhere.log_text()
