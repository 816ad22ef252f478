"""ProxyProcess, the harness every end-to-end test starts proxies with: stop() leaves nothing running."""

import os
import shutil
import time

import pytest

from keybrake_addon.proxy_process import ProxyProcess, keybrake


def children_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as listing:
        return [int(child) for child in listing.read().split()]


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_proxy_under_a_wrapper_that_forks_is_stopped_too(tmp_path):
    """faketime runs the proxy as its child: stopping only the wrapper orphaned a proxy that kept
    running after the test (the fleet's skewed-clock replicas outlived CI's test run)."""
    if shutil.which("faketime") is None:
        pytest.fail("faketime is missing: apt-get install -y faketime (scripts/_deps.sh installs it)", pytrace=False)
    home = tmp_path / "home"
    keybrake(home, "init")
    proxy = ProxyProcess(home=home, upstreams=(), log_path=tmp_path / "proxy.log",
                         command_prefix=("faketime", "-f", "-10m"), env={"FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    proxy.start()
    try:
        (inner,) = children_of(proxy.process.pid)
        assert running(inner)
    finally:
        proxy.stop()
    deadline = time.monotonic() + 5
    while running(inner) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(inner), f"the proxy (pid {inner}) outlived stop()"
    assert os.path.exists(tmp_path / "proxy.log")
