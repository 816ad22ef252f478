"""Runs the `keybrake` CLI and proxy as child processes (the demo, end-to-end tests, benchmarks)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

READY = re.compile(r"Keybrake proxy listening on (http://[\d.]+:(\d+))")
API_READY = re.compile(r"Keybrake vault API and base-URL routes on (https?://[\d.]+:(\d+))")
HEALTH_READY = re.compile(r"Keybrake health checks on (http://[\d.]+:(\d+))")
METRICS_READY = re.compile(r"Keybrake metrics on (http://[\d.]+:(\d+))/metrics")


def keybrake(home: Path, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "keybrake_addon", "--home", str(home), *args],
                            input=stdin, capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"keybrake {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def keybrake_json(home: Path, *args: str):
    return json.loads(keybrake(home, *args, "--json").stdout)


@dataclass
class ProxyProcess:
    """A `keybrake proxy` child on a free port; `start()` returns once it listens."""

    home: Path
    upstreams: tuple[str, ...]  # VENDOR=URL
    log_path: Path
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # added to this process's environment for the child
    command_prefix: tuple[str, ...] = ()  # a wrapper to run the proxy under, e.g. ("faketime", "-f", "-10m")
    process: subprocess.Popen | None = None
    url: str = ""
    port: int = 0
    api_url: str = ""  # set when extra_args ask for --api-port
    health_url: str = ""  # set when extra_args ask for --health-port
    metrics_url: str = ""  # set when extra_args ask for --metrics-port (without /metrics)
    _log: object = field(default=None, repr=False)

    def start(self, timeout_s: float = 30.0) -> "ProxyProcess":
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [*self.command_prefix, sys.executable, "-u", "-m", "keybrake_addon", "--home", str(self.home), "proxy", "--listen-port", "0",
             *(f"--upstream={entry}" for entry in self.upstreams), *self.extra_args],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
            start_new_session=True)  # a group of its own: stop() signals a wrapper's child too (faketime forks)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"keybrake proxy exited early:\n{self.log_text()}")
            log = self.log_text()
            # The banner's last line: every listener's line above it is written by then.
            if (match := READY.search(log)) and "Worker environment:" in log:
                self.url, self.port = match[1], int(match[2])
                if api := API_READY.search(log):
                    self.api_url = api[1]
                if health := HEALTH_READY.search(log):
                    self.health_url = health[1]
                if metrics := METRICS_READY.search(log):
                    self.metrics_url = metrics[1]
                return self
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"keybrake proxy did not become ready:\n{self.log_text()}")

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass  # every process of the group has exited

    def _group_gone(self, timeout_s: float) -> bool:
        """Waits for the child and everything it started (a wrapper's own child) to exit."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.process.poll()  # reaps the child, so a finished one stops counting
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.02)
        return False

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process:
            self._signal_group(signal.SIGTERM)
            if not self._group_gone(timeout_s=10):
                self._signal_group(signal.SIGKILL)
                self._group_gone(timeout_s=10)
        if self._log:
            self._log.close()
            self._log = None
