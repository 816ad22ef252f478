"""The official Node `stripe` package against a running Keybrake, the way the Trigger.dev example uses it.

tests/node/stripe_batch.mjs issues a capped key over the vault API (the parent task), then makes 100
PaymentIntents in parallel with stripe-node and `maxNetworkRetries: 2` (the child tasks): once through the
forward proxy (https-proxy-agent + NODE_EXTRA_CA_CERTS), once through the /stripe base-URL route (no CA).
The cap must hold exactly under that fan-out, and the SDK must not retry a cap hit.
"""

import json
import os
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

from keybrake_addon.proxy_process import ProxyProcess

from .helpers import keybrake

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
N, AMOUNT_MINOR = 100, 5000  # 100 charges of $50


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not on PATH: the Node tests (tests/node, examples/trigger-dev) need Node.js 20+ "
                    f"and npm; CI has them, install Node.js to run the whole suite locally", pytrace=False)
    return path


def npm_ci(directory: Path, timeout_s: float = 600) -> None:
    """`npm ci` from the committed lockfile, failing the test with npm's output if it does not work."""
    npm = _tool("npm")
    command = [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"]
    try:
        result = subprocess.run(command, cwd=directory, capture_output=True, text=True, timeout=timeout_s,
                                env={**os.environ, "NO_UPDATE_NOTIFIER": "1", "npm_config_update_notifier": "false"})
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"`npm ci` in {directory} took more than {timeout_s:.0f} s:\n{expired.stdout}\n{expired.stderr}",
                    pytrace=False)
    if result.returncode != 0:
        pytest.fail(f"`npm ci` in {directory} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}",
                    pytrace=False)


@pytest.fixture(scope="module")
def node_project() -> Path:
    node = _tool("node")
    major = int(subprocess.run([node, "-p", "process.versions.node.split('.')[0]"], capture_output=True, text=True,
                               timeout=30, check=True).stdout.strip())
    if major < 20:
        pytest.fail(f"the stripe and https-proxy-agent packages need Node.js 20+, found {major}", pytrace=False)
    npm_ci(NODE_DIR)
    return NODE_DIR


def run_batch(project: Path, proxy: ProxyProcess, home: Path, mode: str, cap: str) -> dict:
    token = json.loads(keybrake(home, "admin-token", "create", "--name", "node-e2e", "--json").stdout)["token"]
    env = {k: v for k, v in os.environ.items()
           if k.upper() not in {"HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "NODE_EXTRA_CA_CERTS",
                                "NODE_OPTIONS"}}
    env.update(KEYBRAKE_URL=proxy.api_url, KEYBRAKE_API_KEY=token, MODE=mode, N=str(N), AMOUNT=str(AMOUNT_MINOR),
               CAP=cap, LABEL=f"trigger.dev/billing-agent/node-e2e-{mode}")
    if mode == "forward":
        # Node reads NODE_EXTRA_CA_CERTS once, at start-up: it has to be in the child's environment.
        env.update(HTTPS_PROXY=proxy.url, NODE_EXTRA_CA_CERTS=str(home / "certs" / "keybrake-ca.pem"))
    result = subprocess.run([_tool("node"), "stripe_batch.mjs"], cwd=project, env=env, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, (f"stripe_batch.mjs failed ({result.returncode}):\n{result.stdout}\n"
                                    f"{result.stderr}\n--- proxy log ---\n{proxy.log_text()[-4000:]}")
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise AssertionError(f"no JSON from stripe_batch.mjs:\n{result.stdout}\n{result.stderr}") from None


@pytest.mark.parametrize("mode", ["forward", "baseurl"])
@pytest.mark.parametrize("cap, allowed", [("475", 9), ("500", 10)])
def test_parallel_stripe_node_children_stop_exactly_at_the_cap(node_project, api_proxy, fake_stripe, home,
                                                                mode, cap, allowed):
    report = run_batch(node_project, api_proxy, home, mode, cap)
    shown = json.dumps(report, indent=1)[:6000]

    # The parent's key: sk_kb_..., and a retried parent (same Idempotency-Key) gets the same one back.
    assert report["vault_key_prefix"] == "sk_kb_", shown
    assert (report["issue_status"], report["replay_status"], report["replay_header"]) == (201, 200, "true"), shown
    assert report["replay_same_key"] is True, shown

    # Exactly as many $50 charges as fit under the cap; every other child got the Stripe-shaped refusal.
    assert report["other_errors"] == [], shown
    assert report["succeeded"] == allowed, shown
    assert report["succeeded_statuses"] == ["succeeded"], shown
    assert report["cap_hits"] == N - allowed, shown
    assert report["cap_hit_codes"] == ["keybrake_cap_exceeded"], shown
    assert report["cap_hit_statuses"] == [429], shown
    assert report["cap_hit_should_retry"] == ["false"], shown

    # No SDK retries despite maxNetworkRetries: 2: one attempt per child, seen by the SDK and by the proxy.
    assert report["attempts"] == N, shown
    assert report["spend"] == [{"key": report["key_id"], "spent_usd": f"{allowed * AMOUNT_MINOR // 100}.00",
                                "reserved_usd": "0.00", "calls": N, "allowed": allowed, "refused": N - allowed,
                                "cap_hits": N - allowed}], shown

    # Refused calls never reached the vendor; the money that moved is exactly the allowed charges.
    assert fake_stripe.hits == allowed, shown
    assert fake_stripe.money_moved_minor == allowed * AMOUNT_MINOR, shown

    spent = Decimal(report["key"]["spent_usd"])
    assert spent == Decimal(allowed * AMOUNT_MINOR) / 100 <= Decimal(cap), shown
    assert Decimal(report["key"]["reserved_usd"]) == 0, shown
    assert Decimal(report["key"]["remaining_usd"]) == Decimal(cap) - spent, shown
    assert report["revoked"] == [report["key_id"]], shown
