"""`keybrake admin-token create` with ceilings, and `admin-token list` showing them."""

import json

import pytest
from click.testing import CliRunner

from keybrake_addon.cli.main import cli


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.delenv("KEYBRAKE_MASTER_KEY", raising=False)
    monkeypatch.delenv("KEYBRAKE_DATABASE_URL", raising=False)
    home = tmp_path / "home"

    def invoke(*args, ok=True):
        result = CliRunner().invoke(cli, ["--home", str(home), *args])
        if ok:
            assert result.exit_code == 0, result.output
        return result

    invoke("init")
    return invoke


def test_a_token_without_ceilings_is_unrestricted_and_list_says_so(run):
    created = json.loads(run("admin-token", "create", "--name", "ops", "--json").stdout)
    assert created["scope"] is None and created["token"].startswith("kba_")
    (listed,) = json.loads(run("admin-token", "list", "--json").stdout)
    assert (listed["unrestricted"], listed["scope"], listed["scope_problem"]) == (True, None, None)
    assert "unrestricted" in run("admin-token", "list").stdout


def test_ceilings_are_stored_and_listed(run):
    created = run("admin-token", "create", "--name", "team-a", "--vendor", "stripe", "--vendor", "twilio",
                  "--secret", "team-a", "--allow", "post /v1/payment_intents/**", "--allow", "POST /v1/refunds",
                  "--max-daily-usd-cap", "50", "--max-total-usd-cap", "500", "--max-calls", "100",
                  "--max-ttl", "2h", "--may-mint-unpriced", "--json")
    assert "default key TTL (24h) is longer than --max-ttl 2h" in created.stderr
    scope = json.loads(created.stdout)["scope"]
    assert scope == {"vendors": ["stripe", "twilio"], "secret": "team-a",
                     "allow": ["POST /v1/payment_intents/**", "POST /v1/refunds"],
                     "max_daily_usd_cap": "50.00", "max_total_usd_cap": "500.00", "max_calls": 100, "max_ttl": "2h",
                     "may_mint_uncapped": False, "may_mint_allow_all": False, "may_mint_unpriced": True,
                     "budget": None}
    (listed,) = json.loads(run("admin-token", "list", "--json").stdout)
    assert listed["unrestricted"] is False and listed["scope"] == scope
    table = run("admin-token", "list").stdout
    assert ("vendor=stripe,twilio secret=team-a allow=POST /v1/payment_intents/**,POST /v1/refunds "
            "daily<=$50.00 total<=$500.00 calls<=100 ttl<=2h may-mint=unpriced") in table


@pytest.mark.parametrize("flags, says", [
    (("--max-daily-usd-cap", "5", "--may-mint-uncapped"), "--may-mint-uncapped: contradicts"),
    (("--allow", "GET /v1/x", "--may-mint-allow-all"), "--may-mint-allow-all: contradicts"),
    (("--may-mint-allow-all",), "--may-mint-*: the --may-mint-* flags relax ceilings, and none is given"),
    (("--allow", "GET v1/x"), "--allow: the path must start with '/'"),
    (("--allow", "GET /v1/%2e%2e/x"), "--allow: 'GET /v1/%2e%2e/x' has dot segments"),
    (("--max-ttl", "forever"), "--max-ttl: expected a positive duration"),
    (("--max-daily-usd-cap", "lots"), "Invalid value for '--max-daily-usd-cap'"),
    (("--vendor", "paypal"), "Invalid value for '--vendor'"),
])
def test_contradictory_or_malformed_ceilings_are_refused_naming_the_flag(run, flags, says):
    refused = run("admin-token", "create", *flags, ok=False)
    assert refused.exit_code == 2 and says in refused.output
    assert json.loads(run("admin-token", "list", "--json").stdout) == []


def test_a_budget_ceiling_names_a_budget_that_exists(run):
    refused = run("admin-token", "create", "--budget", "team-a", ok=False)
    assert refused.exit_code != 0 and "no budget named 'team-a'" in refused.output
    run("budget", "create", "team-a", "--total-usd-cap", "300")
    created = json.loads(run("admin-token", "create", "--budget", "team-a", "--json").stdout)
    assert created["scope"]["budget"] == "team-a"
    assert "budget=team-a" in run("admin-token", "list").stdout
