from keybrake_addon.paths import is_ambiguous
import pytest

ACCOUNT = "AC" + "0" * 32


@pytest.mark.parametrize("path", [
    f"/2010-04-01/Accounts/{ACCOUNT}/Messages/x/../../Messages.json",
    f"/2010-04-01/Accounts/{ACCOUNT}/Messages/%2E%2E/IncomingPhoneNumbers.json",
    f"/2010-04-01/Accounts/{ACCOUNT}//Messages.json",
    f"/2010-04-01/Accounts/{ACCOUNT}/../AC{'f' * 32}/Messages.json",
    "/domains/../emails", "/domains/%2e%2e/emails", "//emails", "/domains/x/..%2Femails",
    "/v1/customers/../payouts", "/v1/customers/./x", "/v1/customers/..", "/v1/a\\b", "/v1/a%5Cb",
    # path parameters: a Tomcat-style server reads "..;" as ".." and drops ";x=y"
    "/domains/..;/emails", f"/2010-04-01/Accounts/{ACCOUNT}/Messages/..;/..;/..;/Accounts.json",
    "/v1/payment_intents;x=1", "/v1/payment_intents%3Bx=1", "/emails%3b",
])
def test_paths_that_could_resolve_elsewhere(path):
    assert is_ambiguous(path)


@pytest.mark.parametrize("path", [
    "/v1/payment_intents", "/v1/payment_intents/pi_123/confirm", f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json",
    "/emails/batch", "/v1/files/file.v2", "/v1/customers/cus_1..x",
])
def test_ordinary_paths(path):
    assert not is_ambiguous(path)
