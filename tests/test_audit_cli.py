"""`keybrake audit` (order, follow, label prefix), `audit prune` and `spend --label-prefix`, on each backend."""

import json
import os
import pty
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from keybrake_addon.cli.main import cli
from keybrake_addon.ledger.base import AdmitRequest, CallFacts, KeySpec, Resolution, SettleRequest
from keybrake_addon.ledger.postgres import PostgresLedger
from keybrake_addon.ledger.sqlite import SqliteLedger
from keybrake_addon.vendors.base import CostEstimate, Refusal, RefusalKind

BOTH_BACKENDS = True
USD = 1_000_000
LONG_AGO = datetime.now(UTC) - timedelta(days=200)


class Clock:
    def __init__(self, now: datetime | None = None) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now or datetime.now(UTC)


@pytest.fixture
def home(tmp_path, database_url, monkeypatch):
    monkeypatch.delenv("KEYBRAKE_MASTER_KEY", raising=False)
    path = tmp_path / "home"
    assert CliRunner().invoke(cli, ["--home", str(path), "init"]).exit_code == 0
    return path


@pytest.fixture
def run(home):
    def invoke(*args, ok=True):
        result = CliRunner().invoke(cli, ["--home", str(home), *args])
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return invoke


class Writer:
    """Writes audit rows straight into the test's ledger, at the time its clock says."""

    def __init__(self, home, database_url) -> None:
        self.clock = Clock()
        if database_url:
            self.ledger = PostgresLedger(database_url, where="test", clock=self.clock)
        else:
            self.ledger = SqliteLedger(home / "keybrake.db", clock=self.clock)
        self.ledger.put_secret("stripe", "default", b"n" * 12, b"sealed", "fp", None)
        self.keys: dict[str, str] = {}

    def key(self, label: str) -> str:
        if label not in self.keys:
            key_hash = f"{len(self.keys):x}" * 64
            budget = label.split("/")[0] if label.startswith("jobs/") else None  # the jobs/ keys spend from "jobs"
            if budget is not None and self.ledger.get_budget(budget) is None:
                self.ledger.create_budget(budget, parent=None, daily_cap_micros=None, total_cap_micros=1000 * USD)
            self.ledger.create_key(f"kbk_{len(self.keys):04d}", key_hash, KeySpec(
                vendor="stripe", secret_name="default", label=label, daily_cap_micros=None,
                total_cap_micros=1000 * USD, max_calls=None, allowlist=(), allow_all=True, allow_unpriced=False,
                expires_at=None, budget=budget))
            self.keys[label] = key_hash
        return self.keys[label]

    def call(self, label: str, usd: float = 1, *, settled: bool = True) -> int:
        call = CallFacts("stripe", "POST", "/v1/payment_intents", None, datetime.now(UTC))
        admission = self.ledger.admit(AdmitRequest(self.key(label), call, CostEstimate(usd_micros=int(usd * USD))))
        if settled:
            self.ledger.settle(SettleRequest(admission.audit_id, admission.reservation_id, Resolution.SETTLE,
                                             int(usd * USD), 200, ("pi_x",), None, None, None, False, 1.0))
        return admission.audit_id

    def keyless_refusal(self) -> int:
        return self.ledger.record_refusal(CallFacts("stripe", "GET", "/v1/balance", None, datetime.now(UTC)),
                                          Refusal(RefusalKind.MISSING_KEY, "no key"))


@pytest.fixture
def writer(home, database_url):
    made = Writer(home, database_url)
    yield made
    made.ledger.close()


def ids(output: str) -> list[int]:
    return [row["id"] for row in json.loads(output)]


def test_audit_prints_oldest_first_in_a_pipe_and_newest_first_when_asked(run, writer):
    written = [writer.call("jobs/a") for _ in range(4)]
    assert ids(run("audit", "--json").output) == written
    assert ids(run("audit", "--order", "newest", "--limit", "2", "--json").output) == written[:-3:-1]
    assert ids(run("audit", "--order", "oldest", "--limit", "2", "--format", "json").output) == written[:2]


def test_audit_is_newest_first_at_a_terminal(home, writer):
    written = [writer.call("jobs/a") for _ in range(3)]
    child, terminal = pty.fork()
    if child == 0:
        os.execve(sys.executable, [sys.executable, "-m", "keybrake_addon", "--home", str(home), "audit", "--format",
                                   "csv"], dict(os.environ))
    screen = b""
    while True:
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # EIO: the program exited
            break
        if not chunk:
            break
        screen += chunk
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, screen
    rows = [line.split(",") for line in screen.decode().splitlines()[1:] if line.strip()]
    assert [int(row[-1]) for row in rows] == written[::-1]


def test_label_prefix_is_literal_in_audit_and_spend(run, writer):
    writer.call("jobs/billing/1", 2)
    writer.call("jobs/billing/2", 3)
    writer.call("jobs_billing", 5)
    writer.call("other", 7)
    audited = json.loads(run("audit", "--label-prefix", "jobs/", "--json").output)
    assert sorted(row["label"] for row in audited) == ["jobs/billing/1", "jobs/billing/2"]
    spend = json.loads(run("spend", "--label-prefix", "jobs/", "--by", "vendor", "--json").output)
    assert spend == [{"vendor": "stripe", "spent_usd": "5.00", "reserved_usd": "0.00", "calls": 2, "allowed": 2,
                      "refused": 0, "cap_hits": 0}]
    assert [row["label"] for row in json.loads(run("spend", "--label-prefix", "jobs_", "--json").output)] == [
        "jobs_billing"]
    assert run("spend", "--label-prefix", "jobs/", "--by", "vendor", "--format", "csv").output.splitlines() == [
        "vendor,spent_usd,reserved_usd,calls,allowed,refused,cap_hits", "stripe,5.00,0.00,2,2,0,0"]


def test_follow_prints_new_rows_as_json_lines_and_ctrl_c_exits_cleanly(home, writer):
    before = [writer.call("jobs/a") for _ in range(2)]
    follower = subprocess.Popen(
        [sys.executable, "-m", "keybrake_addon", "--home", str(home), "audit", "--follow", "--json",
         "--label-prefix", "jobs/", "--poll-interval", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = [json.loads(follower.stdout.readline()) for _ in before]
        assert [row["label"] for row in first] == ["jobs/a", "jobs/a"]
        writer.call("other")  # not under the prefix
        later = [writer.call("jobs/b", 2), writer.call("jobs/a", 3, settled=False)]
        seen = [json.loads(follower.stdout.readline()) for _ in later]
        assert [(row["label"], row["reserved_usd"]) for row in seen] == [("jobs/b", "2.00"), ("jobs/a", "3.00")]
        follower.send_signal(signal.SIGINT)
        out, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err
    assert out == "" and "Traceback" not in err  # nothing more: "other" never printed


def test_follow_refuses_newest_first(run):
    refused = run("audit", "--follow", "--order", "newest", ok=False)
    assert refused.exit_code == 2 and "oldest first" in refused.output


def test_prune_keeps_spend_and_open_holds_and_a_dry_run_changes_nothing(run, writer):
    writer.clock.now = LONG_AGO
    for _ in range(3):
        writer.call("jobs/old", 4)
    writer.keyless_refusal()
    open_hold = writer.call("jobs/old", 6, settled=False)
    writer.clock.now = None
    writer.call("jobs/new", 1)
    spend_before = {by: run("spend", "--by", by, "--json").output for by in ("key", "label", "vendor", "day", "budget")}
    audit_before = run("audit", "--json").output

    dry = json.loads(run("audit", "prune", "--older-than", "90d", "--dry-run", "--json").output)
    assert (dry["audit_rows_deleted"], dry["reservations_deleted"], dry["days_rolled_up"]) == (4, 3, 1)
    assert dry["dry_run"] is True
    assert run("audit", "--json").output == audit_before

    text = run("audit", "prune", "--older-than", "90d").output
    assert "Deleted 4 audit rows and 3 closed reservations" in text and "; 1 day (" in text
    assert {by: run("spend", "--by", by, "--json").output for by in spend_before} == spend_before
    left = json.loads(run("audit", "--json").output)
    assert [row["id"] for row in left][0] == open_hold and len(left) == 2
    assert json.loads(run("keys", "show", "kbk_0000", "--json").output)["reserved_usd"] == "6.00"


@pytest.mark.parametrize("args, message", [
    (["audit", "prune", "--older-than", "90m"], "at least 1d"),
    (["audit", "prune", "--older-than", "soon"], "positive duration"),
    (["audit", "prune"], "--older-than"),
    (["audit", "--label", "x", "prune", "--older-than", "90d"], "after `prune`"),
])
def test_prune_refuses_unclear_requests(run, args, message):
    refused = run(*args, ok=False)
    assert refused.exit_code == 2 and message in refused.output


def test_audit_and_prune_have_help(run):
    for command in (["audit"], ["audit", "prune"], ["spend"]):
        output = run(*command, "--help").output
        assert "Usage:" in output and "--json" in output, command
