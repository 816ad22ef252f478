"""`keybrake proxy` on a port another program holds: the error names the port and the flag that moves it."""

import socket
import subprocess
import sys

import pytest


@pytest.fixture
def taken_port():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def start_proxy(home, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "keybrake_addon", "--home", str(home), "proxy", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("flag", ["--listen-port", "--api-port", "--health-port", "--metrics-port"])
def test_a_taken_port_is_named_with_its_flag(home, taken_port, flag):
    args = [flag, str(taken_port)] if flag == "--listen-port" else ["--listen-port", "0", flag, str(taken_port)]
    result = start_proxy(home, *args)
    assert result.returncode == 1
    assert f"port {taken_port} on 127.0.0.1 ({flag}) is in use by another program" in result.stderr
    assert f"choose another port with {flag}" in result.stderr
    assert "reverse proxy to" not in result.stderr + result.stdout  # not mitmproxy's text


def test_two_listeners_on_one_port_are_refused(home):
    result = start_proxy(home, "--listen-port", "18099", "--api-port", "18099")
    assert result.returncode == 1
    assert "--listen-port and --api-port are both 18099" in result.stderr
