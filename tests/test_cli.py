"""The CLI in-process: init, secrets, issuance rules, key listing, revocation, env."""

import hashlib
import json
import os
import pty
import select
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner

from keybrake_addon.cli.main import cli
from keybrake_addon.vault.crypto import encode_master_key, new_master_key

SECRET = "sk_test_" + "cli0secret0value"


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.delenv("KEYBRAKE_MASTER_KEY", raising=False)
    home = tmp_path / "home"

    def invoke(*args, stdin=None, ok=True):
        result = CliRunner().invoke(cli, ["--home", str(home), *args], input=stdin)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    invoke.home = home
    return invoke


def test_init_is_idempotent_and_private(run):
    first = run("init").output
    assert "created master key" in first and "created CA certificate" in first
    second = run("init").output
    assert "created" not in second and "exists  master key" in second
    home = run.home
    assert stat.S_IMODE(os.stat(home / "master.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(home / "certs" / "keybrake-ca-key.pem").st_mode) == 0o600
    assert b"PRIVATE KEY" not in (home / "certs" / "keybrake-ca.pem").read_bytes()


def test_secret_set_reads_stdin_and_list_never_shows_it(run):
    run("init")
    assert "fingerprint" in run("secret", "set", "stripe", stdin=SECRET + "\n").output
    listing = run("secret", "list", "--json").output
    assert SECRET not in listing
    (row,) = json.loads(listing)
    assert (row["vendor"], row["name"], len(row["fingerprint"])) == ("stripe", "default", 8)
    assert run("secret", "set", "stripe", stdin="\n", ok=False).exit_code != 0


def test_wrong_master_key_is_a_clear_error(run, monkeypatch):
    run("init")
    run("secret", "set", "stripe", stdin=SECRET + "\n")
    monkeypatch.setenv("KEYBRAKE_MASTER_KEY", encode_master_key(new_master_key()))
    result = run("secret", "list", ok=False)
    assert result.exit_code == 1
    assert "master key does not match" in result.output


def test_issue_requires_a_cap_and_an_allowlist_unless_told(run):
    run("init")
    run("secret", "set", "stripe", stdin=SECRET + "\n")
    no_cap = run("issue", "--vendor", "stripe", "--allow", "POST /v1/payment_intents", ok=False)
    assert no_cap.exit_code == 2 and "--no-cap" in no_cap.output
    no_allow = run("issue", "--vendor", "stripe", "--daily-usd-cap", "5", ok=False)
    assert no_allow.exit_code == 2 and "--allow-all" in no_allow.output
    bad = run("issue", "--vendor", "stripe", "--daily-usd-cap", "5", "--allow", "POST v1", ok=False)
    assert bad.exit_code == 2 and "must start with '/'" in bad.output
    negative = run("issue", "--vendor", "stripe", "--daily-usd-cap", "-5", "--allow-all", ok=False)
    assert negative.exit_code == 2
    loose = json.loads(run("issue", "--vendor", "stripe", "--no-cap", "--allow-all", "--json").output)
    assert (loose["remaining_usd"], loose["allow_all"]) == ("unlimited", True)


def test_issue_json_and_key_format(run):
    run("init")
    run("secret", "set", "stripe", stdin=SECRET + "\n")
    issued = json.loads(run("issue", "--vendor", "stripe", "--daily-usd-cap", "500", "--allow",
                            "POST /v1/payment_intents", "--expires-in", "2h", "--label", "run-1", "--json").output)
    assert {"key_id", "vault_key", "vendor", "label", "expires_at"} <= issued.keys()
    assert issued["vault_key"].startswith("sk_kb_") and len(issued["vault_key"]) == 6 + 43
    assert issued["key_id"].startswith("kbk_") and issued["key_id"] not in issued["vault_key"]
    assert issued["expires_at"].endswith("Z")
    plain = run("issue", "--vendor", "stripe", "--daily-usd-cap", "1", "--allow-all")
    assert plain.stdout.strip().startswith("sk_kb_")  # the key alone on stdout, for $(...)
    db = (run.home / "keybrake.db").read_bytes()
    assert issued["vault_key"].encode() not in db


def test_keys_list_filters_and_revoke(run):
    run("init")
    run("secret", "set", "stripe", stdin=SECRET + "\n")
    ids = [json.loads(run("issue", "--vendor", "stripe", "--total-usd-cap", "5", "--allow-all", "--label", label,
                          "--json").output)["key_id"] for label in ("a", "a", "b")]
    assert [k["key_id"] for k in json.loads(run("keys", "list", "--label", "a", "--json").output)] == ids[:2]
    assert "revoked 1 key(s)" in run("revoke", ids[2]).output
    assert [k["key_id"] for k in json.loads(run("keys", "list", "--active", "--json").output)] == ids[:2]
    assert json.loads(run("revoke", "--label", "a", "--json").output) == {"revoked": ids[:2], "already_revoked": []}
    assert json.loads(run("keys", "show", ids[0], "--json").output)["status"] == "revoked"
    assert run("revoke", "kbk_nosuchkey", ok=False).exit_code == 1
    assert run("revoke", ok=False).exit_code == 2


def test_revoke_says_what_changed_and_a_name_that_matches_nothing_is_an_error(run):
    run("init")
    run("secret", "set", "stripe", stdin=SECRET + "\n")
    first, second = (json.loads(run("issue", "--vendor", "stripe", "--total-usd-cap", "5", "--allow-all", "--label",
                                    "run-7", "--json").output)["key_id"] for _ in range(2))
    run("revoke", first)
    again = run("revoke", first).output
    assert "already revoked before, unchanged: " + first in again and "revoked 1 key(s)" not in again
    by_label = run("revoke", "--label", "run-7").output
    assert f"revoked 1 key(s): {second}" in by_label and f"already revoked before, unchanged: {first}" in by_label
    typo = run("revoke", "--label", "run-8", ok=False)
    assert typo.exit_code == 1 and "no keys with label 'run-8'" in typo.output


def test_rotating_a_secret_keeps_the_key(run):
    run("init")
    run("secret", "set", "stripe", stdin=SECRET + "\n")
    key_id = json.loads(run("issue", "--vendor", "stripe", "--total-usd-cap", "5", "--allow-all", "--json").output)["key_id"]
    run("secret", "set", "stripe", stdin=SECRET + "rotated\n")
    assert json.loads(run("keys", "show", key_id, "--json").output)["status"] == "active"
    assert len(json.loads(run("secret", "list", "--json").output)) == 1


def test_env_lines_point_at_the_ca(run):
    run("init")
    lines = run("env", "--proxy-url", "http://127.0.0.1:9999").output
    assert "export HTTPS_PROXY=http://127.0.0.1:9999" in lines
    assert f"NODE_EXTRA_CA_CERTS={run.home / 'certs' / 'keybrake-ca.pem'}" in lines
    assert "REQUESTS_CA_BUNDLE=" in lines and "ca_bundle_path" in lines
    bundle = run.home / "certs" / "keybrake-ca-bundle.pem"
    assert (run.home / "certs" / "keybrake-ca.pem").read_bytes() in bundle.read_bytes()


def test_every_command_has_help(run):
    for command in (["init"], ["secret", "set"], ["secret", "list"], ["issue"], ["keys", "list"], ["keys", "show"],
                    ["revoke"], ["proxy"], ["audit"], ["spend"], ["env"], ["demo"], ["secret", "delete"],
                    ["settings", "show"], ["settings", "set"]):
        output = run(*command, "--help").output
        assert "Usage:" in output and len(output.splitlines()) > 4, command


def test_demo_stops_the_runaway_batch_at_the_cap(tmp_path):
    result = subprocess.run([sys.executable, "-m", "keybrake_addon", "--home", str(tmp_path / "demo-home"), "demo",
                             "--charges", "20", "--cap", "475"], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "9 charged, 11 stopped at the cap; the fake Stripe moved $450.00." in out
    spend_row = next(line for line in out.splitlines() if line.startswith("demo/runaway-batch"))
    assert spend_row.split()[1:4] == ["450.00", "0.00", "20"]  # spent, reserved, calls
    assert out.count("pi_") == 9


@pytest.mark.parametrize("label", ["run\x1b]0;owned\x07", "run\nforged", "run\x9b2J", "run\x7f"])
def test_issue_refuses_a_label_with_control_characters(run, label):
    run("init")
    run("secret", "set", "stripe", stdin=SECRET + "\n")
    refused = run("issue", "--vendor", "stripe", "--daily-usd-cap", "5", "--allow-all", "--label", label, ok=False)
    assert refused.exit_code == 2 and "--label: must not contain control characters" in refused.output
    assert json.loads(run("keys", "list", "--json").output) == []


def test_secret_names_refuse_control_characters(run):
    run("init")
    refused = run("secret", "set", "stripe", "--name", "main\x1b[2J", stdin=SECRET + "\n", ok=False)
    assert refused.exit_code == 2 and "control characters" in refused.output
    assert json.loads(run("secret", "list", "--json").output) == []


# --- keys expire by default ---------------------------------------------------------------


def issued_json(run, *extra, ok=True):
    result = run("issue", "--vendor", "stripe", "--daily-usd-cap", "5", "--allow-all", "--json", *extra, ok=ok)
    return json.loads(result.output) if ok else result


def hours_left(key: dict) -> float:
    expires = datetime.fromisoformat(key["expires_at"].replace("Z", "+00:00"))
    return (expires - datetime.now(UTC)).total_seconds() / 3600


def test_a_key_issued_without_expires_in_expires_after_the_default_ttl(run):
    run("init")
    run("secret", "set", "stripe", stdin=SECRET + "\n")
    assert 23.9 < hours_left(issued_json(run)) <= 24
    run("settings", "set", "default-key-ttl", "12h")
    assert 11.9 < hours_left(issued_json(run)) <= 12
    assert "24h" in run("issue", "--help").output and "max-key-ttl" in run("issue", "--help").output


def test_a_ttl_over_the_maximum_is_refused_naming_the_flag_until_raised(run):
    run("init")
    run("secret", "set", "stripe", stdin=SECRET + "\n")
    refused = issued_json(run, "--expires-in", "90d", ok=False)
    assert refused.exit_code == 2
    assert "--expires-in: 90d is longer than this installation's maximum key lifetime (30d)" in refused.output
    assert json.loads(run("keys", "list", "--json").output) == []
    run("settings", "set", "max-key-ttl", "90d")
    assert 89 * 24 < hours_left(issued_json(run, "--expires-in", "90d")) <= 90 * 24


def test_settings_show_and_set_validate(run):
    run("init")
    factory = json.loads(run("settings", "show", "--json").output)
    assert factory == {"default-key-ttl": {"value": "24h", "source": "factory"},
                       "max-key-ttl": {"value": "30d", "source": "factory"}}
    assert "(factory default)" in run("settings", "show").output
    run("settings", "set", "max-key-ttl", "60d")
    run("settings", "set", "default-key-ttl", "12h")
    assert json.loads(run("settings", "show", "--json").output) == {
        "default-key-ttl": {"value": "12h", "source": "set"}, "max-key-ttl": {"value": "60d", "source": "set"}}
    too_long = run("settings", "set", "default-key-ttl", "61d", ok=False)
    assert too_long.exit_code == 2 and "longer than max-key-ttl (60d)" in too_long.output
    zero = run("settings", "set", "max-key-ttl", "0d", ok=False)
    assert zero.exit_code == 2 and "positive duration" in zero.output
    unknown = run("settings", "set", "key-ttl", "1h", ok=False)
    assert unknown.exit_code == 2
    assert json.loads(run("settings", "show", "--json").output)["default-key-ttl"]["value"] == "12h"


# --- secret hygiene -----------------------------------------------------------------------


@pytest.mark.parametrize("value, reason", [
    ("pk_live_" + "a" * 24, "publishable key"),
    ("sk_test_abc def", "spaces"),
    ("   ", "no secret"),
])
def test_secret_set_refuses_what_cannot_be_a_real_secret(run, value, reason):
    run("init")
    refused = run("secret", "set", "stripe", stdin=value + "\n", ok=False)
    assert refused.exit_code == 1 and reason in refused.output and "not stored" in refused.output
    assert json.loads(run("secret", "list", "--json").output) == []


def test_secret_set_refuses_a_vault_key(run):
    run("init")
    run("secret", "set", "stripe", stdin=SECRET + "\n")
    vault_key = issued_json(run)["vault_key"]
    refused = run("secret", "set", "stripe", stdin=vault_key + "\n", ok=False)
    assert refused.exit_code == 1 and "Keybrake vault key" in refused.output
    (stored,) = json.loads(run("secret", "list", "--json").output)
    assert stored["created_at"] == stored["updated_at"]  # not rotated to the vault key


def test_secret_set_warns_when_a_stripe_secret_changes_mode(run):
    run("init")
    run("secret", "set", "stripe", stdin=SECRET + "\n")
    same = run("secret", "set", "stripe", stdin="sk_test_" + "b" * 24 + "\n")
    assert "warning" not in same.stderr
    live = run("secret", "set", "stripe", stdin="rk_live_" + "c" * 24 + "\n")
    assert "warning: this live-mode secret replaces a test-mode one" in live.stderr
    assert "stored stripe secret" in live.stdout  # still stored
    fingerprint = json.loads(run("secret", "list", "--json").output)[0]["fingerprint"]
    assert fingerprint == hashlib.sha256(("rk_live_" + "c" * 24).encode()).hexdigest()[:8]


def test_secret_delete_needs_force_while_active_keys_use_it(run):
    run("init")
    run("secret", "set", "stripe", stdin=SECRET + "\n")
    first = issued_json(run, "--label", "nightly-billing")
    revoked = issued_json(run, "--label", "old")
    run("revoke", revoked["key_id"])
    refused = run("secret", "delete", "stripe", ok=False)
    assert refused.exit_code == 1 and "--force" in refused.output
    assert first["key_id"] in refused.output and "nightly-billing" in refused.output
    assert revoked["key_id"] not in refused.output
    assert len(json.loads(run("secret", "list", "--json").output)) == 1
    forced = json.loads(run("secret", "delete", "stripe", "--force", "--json").output)
    assert forced == {"deleted": {"vendor": "stripe", "name": "default"},
                      "cut_off_keys": [{"key_id": first["key_id"], "label": "nightly-billing"}]}
    assert json.loads(run("secret", "list", "--json").output) == []
    missing = run("secret", "delete", "stripe", ok=False)
    assert missing.exit_code == 1 and "no stripe secret named 'default'" in missing.output


def test_secret_set_at_a_terminal_does_not_echo_the_secret(tmp_path):
    env = {**os.environ, "KEYBRAKE_HOME": str(tmp_path / "home"), "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("KEYBRAKE_MASTER_KEY", None)
    env.pop("KEYBRAKE_DATABASE_URL", None)
    subprocess.run([sys.executable, "-m", "keybrake_addon", "init"], env=env, check=True, capture_output=True)
    # pty.fork makes the pseudo-terminal the child's controlling terminal, as a shell would.
    child, terminal = pty.fork()
    if child == 0:
        os.execve(sys.executable, [sys.executable, "-m", "keybrake_addon", "secret", "set", "stripe"], env)
    screen = _read_until(terminal, b"Enter")
    os.write(terminal, (SECRET + "\n").encode())
    screen += _read_until(terminal, None)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, screen
    assert b"stored stripe secret" in screen and SECRET.encode() not in screen


def _read_until(terminal: int, marker: bytes | None, timeout_s: float = 60) -> bytes:
    """What the terminal shows, up to `marker` (or until the program exits)."""
    seen, deadline = b"", time.monotonic() + timeout_s
    while time.monotonic() < deadline and (marker is None or marker not in seen):
        if not select.select([terminal], [], [], 0.5)[0]:
            continue
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # EIO: the program exited and closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    return seen


def test_worker_tokens_are_shown_once_and_revocable(run):
    run("init")
    created = json.loads(run("worker-token", "create", "--name", "ci", "--json").output)
    assert created["token"].startswith("kbw_") and created["name"] == "ci"
    listed = run("worker-token", "list").output
    assert created["token_id"] in listed and created["token"] not in listed
    assert "revoked" in run("worker-token", "revoke", created["token_id"]).output
    assert json.loads(run("worker-token", "list", "--json").output)[0]["revoked_at"] is not None
    missing = run("worker-token", "revoke", "kbwt_nope", ok=False)
    assert missing.exit_code == 1 and "no worker token kbwt_nope" in missing.output


def test_env_for_another_host_places_the_credential_and_never_prints_0_0_0_0(run):
    run("init")
    lines = run("env", "--proxy-url", "http://10.0.0.5:8080").output
    assert "export HTTPS_PROXY=http://worker:<WORKER_TOKEN>@10.0.0.5:8080" in lines
    assert "keybrake worker-token create" in lines
    assert "worker:" not in run("env", "--proxy-url", "http://10.0.0.5:8080", "--proxy-auth", "off").output
    refused = run("env", "--proxy-url", "http://0.0.0.0:8080", ok=False)
    assert refused.exit_code == 2 and "--proxy-url" in refused.output and "export" not in refused.output


def test_an_open_proxy_off_loopback_needs_the_insecure_flag(run):
    refused = run("proxy", "--listen-host", "0.0.0.0", "--proxy-auth", "off", "--listen-port", "0", ok=False)
    assert refused.exit_code == 2
    assert "open proxy" in refused.output and "--insecure-open-proxy" in refused.output
