"""`keybrake budget` and `issue --budget` in-process: create, nest, list, show, freeze, spend by budget."""

import json

import pytest
from click.testing import CliRunner

from keybrake_addon.cli.main import cli
from keybrake_addon.home import KeybrakeHome
from keybrake_addon.installation import open_installation
from keybrake_addon.ledger.base import AdmitRequest, CallFacts
from keybrake_addon.vault.vault_keys import hash_vault_key
from keybrake_addon.vendors.base import CostEstimate

SECRET = "sk_test_" + "cli0secret0value"
ALLOW = ("--allow", "POST /v1/payment_intents")


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.delenv("KEYBRAKE_MASTER_KEY", raising=False)
    monkeypatch.delenv("KEYBRAKE_DATABASE_URL", raising=False)
    home = tmp_path / "home"

    def invoke(*args, stdin=None, ok=True):
        result = CliRunner().invoke(cli, ["--home", str(home), *args], input=stdin)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    invoke("init")
    invoke("secret", "set", "stripe", stdin=SECRET + "\n")
    invoke.home = home
    return invoke


def as_json(result) -> dict | list:
    return json.loads(result.output)


def test_create_nest_list_and_show(run):
    org = as_json(run("budget", "create", "org", "--total-usd-cap", "1000", "--json"))
    assert (org["name"], org["parent"], org["total_usd_cap"], org["daily_usd_cap"]) == ("org", None, "1000.00", None)
    assert (org["status"], org["remaining_usd"], org["spent_usd"]) == ("active", "1000.00", "0.00")
    text = run("budget", "create", "support", "--parent", "org", "--daily-usd-cap", "200").output
    assert "created budget support under org; daily cap $200.00" in text
    assert "keybrake issue --budget support" in text

    listed = as_json(run("budget", "list", "--json"))
    assert [(b["name"], b["parent"], b["children"]) for b in listed] == [("org", None, ["support"]),
                                                                          ("support", "org", [])]
    table = run("budget", "list").output
    assert table.splitlines()[0].split() == ["name", "parent", "status", "daily_usd_cap", "total_usd_cap",
                                             "spent_usd", "reserved_usd", "today_usd", "remaining_usd", "calls"]
    key = as_json(run("issue", "--vendor", "stripe", "--budget", "support", *ALLOW, "--json"))
    assert key["budget"] == "support" and key["daily_usd_cap"] is None  # the budget's cap stands in
    shown = as_json(run("budget", "show", "support", "--json"))
    assert shown["keys"] == [key["key_id"]] and shown["ancestors"] == ["org"]
    assert "ancestors: org" in run("budget", "show", "support").output


def test_create_refuses_clearly(run):
    run("budget", "create", "org")
    again = run("budget", "create", "org", ok=False)
    assert again.exit_code == 2 and "a budget named 'org' already exists" in again.output
    orphan = run("budget", "create", "team", "--parent", "nobody", ok=False)
    assert "--parent: no budget named 'nobody'" in orphan.output
    bad_name = run("budget", "create", "team/a", ok=False)
    assert bad_name.exit_code == 2 and "letters, digits" in bad_name.output
    assert "not a dollar amount" in run("budget", "create", "x", "--daily-usd-cap", "lots", ok=False).output
    assert "no budget nobody" in run("budget", "show", "nobody", ok=False).output
    assert "no budget nobody" in run("budget", "freeze", "nobody", ok=False).output


def test_issue_into_a_budget_needs_a_budget_that_exists_and_a_cap_somewhere(run):
    missing = run("issue", "--vendor", "stripe", "--budget", "nobody", "--total-usd-cap", "5", *ALLOW, ok=False)
    assert missing.exit_code == 2 and "--budget: no budget named 'nobody'" in missing.output
    assert "keybrake budget create nobody" in missing.output
    run("budget", "create", "uncapped")
    uncapped = run("issue", "--vendor", "stripe", "--budget", "uncapped", *ALLOW, ok=False)
    assert "--daily-usd-cap: a key needs a daily or total USD cap" in uncapped.output
    run("budget", "create", "capped", "--parent", "uncapped", "--total-usd-cap", "10")
    run("budget", "create", "below", "--parent", "capped")
    assert as_json(run("issue", "--vendor", "stripe", "--budget", "below", *ALLOW, "--json"))["budget"] == "below"


def test_freeze_and_unfreeze_say_what_happens(run):
    run("budget", "create", "org")
    run("budget", "create", "team", "--parent", "org")
    assert "every key under it is refused from its next call" in run("budget", "freeze", "org").output
    team = as_json(run("budget", "show", "team", "--json"))
    assert (team["status"], team["frozen_by"], team["frozen_at"]) == ("frozen", "org", None)
    run("budget", "freeze", "team")
    assert "its ancestor org is frozen" in run("budget", "unfreeze", "team").output
    unfrozen = as_json(run("budget", "unfreeze", "org", "--json"))
    assert (unfrozen["status"], unfrozen["frozen_at"]) == ("active", None)


def test_spend_by_budget_includes_the_children(run):
    run("budget", "create", "org", "--total-usd-cap", "100")
    run("budget", "create", "team", "--parent", "org")
    keys = [as_json(run("issue", "--vendor", "stripe", "--budget", name, *ALLOW, "--json"))
            for name in ("team", "org")]
    installation = open_installation(KeybrakeHome.resolve(run.home))
    try:
        for key, usd in zip(keys, (30, 20)):
            call = CallFacts("stripe", "POST", "/v1/payment_intents", None, None)
            assert installation.ledger.admit(AdmitRequest(hash_vault_key(key["vault_key"]), call,
                                                          CostEstimate(usd * 1_000_000))).allowed
    finally:
        installation.close()
    spend = {row["budget"]: row for row in as_json(run("spend", "--by", "budget", "--format", "json"))}
    assert {name: (row["reserved_usd"], row["calls"]) for name, row in spend.items()} == {
        "org": ("50.00", 2), "team": ("30.00", 1)}
    assert "org" in run("spend", "--by", "budget").output
    assert "--by budget" in run("budget", "--help").output
