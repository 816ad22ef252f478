"""Keybrake throughput and latency benchmark: what does the gate cost on top of mitmproxy?

Measured, in one run on one machine, against one fake Stripe (keybrake_addon.fakes.fake_stripe,
its own process) with one load generator (its own process, httpx.AsyncClient, HTTP/1.1 keep-alive):

  direct     the client POSTs straight to the fake upstream over plain http: the floor.
  mitmproxy  bare mitmdump (regular mode, its own CA, connection_strategy=lazy) with a tiny inline
             addon that rewrites api.stripe.com to the fake upstream, exactly what Keybrake's
             --upstream does. The client sends https://api.stripe.com through it (CONNECT + TLS).
  mitmproxy-trimmed
             the same inline addon in mitmproxy with only the mitmproxy addons Keybrake keeps
             (keybrake_addon/mitm_master.py: KeybrakeMaster), and Keybrake's http2=False. Keybrake
             leaves out most of stock mitmdump's ~35 addons, each of which mitmproxy calls on every
             event of every flow; this path shows how much of Keybrake's ratio to bare mitmdump that
             buys, and so what the gate itself costs on top of the same mitmproxy. Reported, not judged:
             the issue's targets are against stock mitmdump.
  keybrake   `keybrake proxy --upstream stripe=...`, the same CONNECT + TLS, with a vault key:
             key check, reservation in SQLite, secret swap, settlement from the response.
  keybrake-baseurl
             the same `keybrake proxy` process (started with --api-port 0), reached through its API
             listener's base-URL route {api_url}/stripe/v1/payment_intents: plain HTTP keep-alive,
             no CONNECT, no TLS, the same gate. (Cheaper for the client than the forward path, so its
             ratio to bare mitmproxy is not like for like: it shows what skipping TLS buys.)
  keybrake-metrics
             only with --metrics: a second `keybrake proxy` (its own home, the same options) started with
             --metrics-port 0 and an alert subscription (thresholds 50,80,100, to a loopback receiver in
             this script), reached like `keybrake`, while this script scrapes its /metrics every
             --scrape-interval seconds (1 s by default: far more often than Prometheus's usual 15 s) for the
             whole measurement. Its CPU per request includes rendering the scrapes and deriving alert
             events at every counter change. Compared with `keybrake` run for run: the issue's "alerts and
             metrics cost the vendor-call path nothing measurable".
  keybrake-pg
             only with --database URL: one `keybrake --database URL proxy` replica (its own home, made
             with `keybrake --database URL init`), the same CONNECT + TLS as keybrake, its ledger in
             PostgreSQL. The URL must name a throwaway database: keys and audit rows are written to it.
             Its CPU per request is the proxy's only; the PostgreSQL server's CPU is not counted.

The workload is POST /v1/payment_intents with amount=100&currency=usd and a unique
Idempotency-Key per request, so Keybrake does its full reserve + settle path. Every response must be
a 200; any other status or transport error is counted and makes the run fail (exit code 2).

For each concurrency (default 1, 16 and 64) and path: warm-up requests, then a fixed number of measured
requests, repeated R times with the path order rotated each repeat. Reported: median throughput
(req/s), median of per-run p50 and p99 latency (ms), and the proxy's CPU time per request. Also:
`SqliteLedger.admit` + `settle` called directly in a loop on one thread (admit+settle pairs/s, reported
as reservations/s, and the admit transactions alone; measured as
the proxy runs it, with background checkpoints and a running Housekeeper thread, and the old way
without them), the proxies' resident memory after the run, and the figures users care about (added
latency as a share of a typical 300 ms Stripe call, headroom over Stripe's live limit of 100 writes/s).

Ledger batched: the AsyncLedger the gate awaits (installation.async_ledger(): group commit on the
ledger thread; on SQLite also the never-waiting on-loop connection), with the proxy's Housekeeper,
on ONE hot key, at 1, 16 and 64 callers: asyncio tasks on one loop, each awaiting ledger.admit then
calling ledger.settle; admit+settle pairs/s with the clock stopped after ledger.drain() (every
settlement committed; the key's totals are checked afterwards). Backends: sqlite (as the gate runs
it), sqlite-thread-only (no on-loop fast path: every call through group commit; reported, not
judged) and postgresql (only with --database). Without --database the PostgreSQL parts are skipped
with a note.

Targets (PASS/MISS is printed; the exit code ignores them unless --strict, as machines are noisy):
Keybrake forward throughput >= 0.85 x bare mitmproxy at concurrency 16 (first target) and >= 0.90 x
(issue target); Keybrake forward p50 <= 1.15 x bare mitmproxy at every concurrency; Keybrake forward p50
at concurrency 1 at most 0.3 ms above bare mitmproxy; the ledger alone (as the proxy runs it) >= 5000
reservations/s on one thread. The rebuilt ledger's: Keybrake (SQLite) throughput >= 0.90 x bare
mitmproxy at c=16; Keybrake (SQLite) p50 at c=1 at most 0.5 ms above bare mitmproxy; keybrake-pg (one
replica) throughput >= 0.75 x bare mitmproxy at c=16; the ledger batched at 64 callers >= 15,000
pairs/s on SQLite and >= 3,000 on PostgreSQL.

Run:
    python scripts/bench.py [--quick] [--concurrency 1,16] [--requests N] [--repeats R] [--json out.json]
                            [--database postgresql://postgres@127.0.0.1:5432/kb_bench_SCRATCH]
                            [--metrics [--scrape-interval S]]

Everything listens on 127.0.0.1; every subprocess is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from _fingerprint import package_fingerprint  # scripts/ is sys.path[0] when run as a script

PY = sys.executable
UPSTREAM_SECRET = "sk_test_" + "bench0upstream0secret0only"  # what the fake Stripe accepts
STRIPE_BASE = "https://api.stripe.com"
ENDPOINT = "/v1/payment_intents"
FORM_BODY = "amount=100&currency=usd"
PATHS = ("direct", "mitmproxy", "keybrake", "keybrake-baseurl")
PG_PATH = "keybrake-pg"  # only with --database
METRICS_PATH = "keybrake-metrics"  # only with --metrics
GATED_PATHS = ("keybrake", "keybrake-baseurl", PG_PATH, METRICS_PATH)  # every 200 must carry the gate's balance headers
DATABASE_ENV = "KEYBRAKE_DATABASE_URL"  # never inherited by the SQLite paths' processes
TYPICAL_STRIPE_CALL_MS = 300.0
STRIPE_LIVE_WRITES_PER_S = 100.0
TARGET_THROUGHPUT_RATIO = 0.85  # keybrake / bare mitmproxy, at concurrency 16
TARGET_P50_RATIO = 1.15  # keybrake / bare mitmproxy
TARGET_THROUGHPUT_RATIO_ISSUE = 0.90  # keybrake / bare mitmproxy, at concurrency 16 (the issue's target)
TARGET_ADDED_P50_MS = 0.3  # keybrake p50 - bare mitmproxy p50, at concurrency 1
TARGET_LEDGER_PER_S = 5000.0  # admit+settle pairs per second on one thread, as the proxy runs the ledger
# The rebuilt ledger's targets (AsyncLedger batching; PostgreSQL for replicas).
TARGET_ADDED_P50_MS_REBUILD = 0.5  # keybrake (SQLite) p50 - bare mitmproxy p50, at concurrency 1
TARGET_PG_THROUGHPUT_RATIO = 0.75  # keybrake-pg (one replica) / bare mitmproxy, at concurrency 16
TARGET_BATCHED_PER_S = {"sqlite": 15_000.0, "postgresql": 3_000.0}  # admit+settle pairs/s, 64 callers, one key
READY_TIMEOUT_S = 60.0
SKIPPED_PG = "no --database URL given: the PostgreSQL path, ledger figures and targets need one"
CLK_TCK = os.sysconf("SC_CLK_TCK")

FAKE_READY = re.compile(r"fake stripe listening on http://127\.0\.0\.1:(\d+)")
KEYBRAKE_READY = re.compile(r"Keybrake proxy listening on http://127\.0\.0\.1:(\d+)")
KEYBRAKE_API_READY = re.compile(r"Keybrake vault API and base-URL routes on http://127\.0\.0\.1:(\d+)")
KEYBRAKE_METRICS_READY = re.compile(r"Keybrake metrics on http://127\.0\.0\.1:(\d+)/metrics")
MITM_READY = re.compile(r"bench mitmdump listening on 127\.0\.0\.1:(\d+)")
TRIMMED_PATH = "mitmproxy-trimmed"
# Runs the redirect script's addons under KeybrakeMaster (argv: script, confdir).
TRIMMED_LAUNCHER = """
import asyncio, importlib.util, sys
from mitmproxy import options
from keybrake_addon.mitm_master import KeybrakeMaster
spec = importlib.util.spec_from_file_location("redirect", sys.argv[1])
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)

async def main():
    master = KeybrakeMaster(options.Options(), with_termlog=False)
    master.addons.add(*script.addons)
    master.options.update(confdir=sys.argv[2], listen_host="127.0.0.1", listen_port=0,
                           connection_strategy="lazy", http2=False)
    await master.run()

asyncio.run(main())
"""

REDIRECT_ADDON = '''
"""Bare-mitmproxy baseline: send api.stripe.com to the fake upstream, as keybrake --upstream does."""
from mitmproxy import ctx

UPSTREAM = ("http", "127.0.0.1", {port})


class Redirect:
    def request(self, flow):
        if flow.request.pretty_host == "api.stripe.com":
            flow.request.scheme, flow.request.host, flow.request.port = UPSTREAM

    def running(self):
        host, port = ctx.master.addons.get("proxyserver").listen_addrs()[0][:2]
        print(f"bench mitmdump listening on {{host}}:{{port}}", flush=True)


addons = [Redirect()]
'''


# ----- load generator (runs in its own process: `bench.py --loadgen CONFIG_JSON`) -------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a whole process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def postgres_cpu_seconds() -> float:
    """User + system CPU time of every `postgres` process on this host (the server and each
    connection's backend; a backend that exits between two readings takes its time with it)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    total += cpu_seconds(int(entry.name))
            except (OSError, ValueError):
                pass  # gone, or not ours to read
    return total


def local_database(database_url: str) -> bool:
    """Whether the server runs on this host, so that its CPU can be read (a socket path, or loopback)."""
    host = urlparse(database_url).hostname
    return host in (None, "", "localhost", "127.0.0.1", "::1") or host.startswith("/")


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(fraction * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


async def _phase(client, cfg: dict, count: int, tag: str) -> dict:
    """Send `count` requests from `concurrency` workers; return timings and outcomes."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    errors: Counter = Counter()
    gated = 0  # responses that carry Keybrake's balance headers: proof the gate really ran
    next_index = iter(range(count))
    headers = {"authorization": f"Bearer {cfg['token']}", "content-type": "application/x-www-form-urlencoded"}

    async def worker() -> None:
        nonlocal gated
        for index in next_index:  # shared iterator: bounded, each index taken once
            started = time.perf_counter()
            try:
                response = await client.post(ENDPOINT, content=FORM_BODY,
                                             headers={**headers, "idempotency-key": f"{tag}-{index}"})
                statuses[response.status_code] += 1
                gated += "x-keybrake-key-id" in response.headers
            except Exception as error:  # noqa: BLE001 - counted and reported, never hidden
                errors[type(error).__name__] += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(cfg["concurrency"])))
    wall = time.perf_counter() - started
    latencies.sort()
    ok = statuses.get(200, 0)
    return {
        "requests": count, "ok": ok, "wall_s": wall, "throughput": ok / wall if wall > 0 else 0.0,
        "p50_ms": percentile(latencies, 0.50) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else float("nan"),
        "statuses": {str(k): v for k, v in statuses.items()}, "errors": dict(errors), "gated": gated,
    }


async def _loadgen(cfg: dict) -> dict:
    import ssl

    import httpx

    concurrency = cfg["concurrency"]
    verify = ssl.create_default_context(cafile=cfg["cafile"]) if cfg.get("cafile") else True
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=cfg["base_url"], proxy=cfg.get("proxy"), verify=verify, limits=limits,
                                 http1=True, http2=False, trust_env=False, timeout=30.0) as client:
        tag = uuid.uuid4().hex[:12]
        warmup = await _phase(client, cfg, cfg["warmup"], tag + "w")
        database_cpu = cfg.get("database_cpu", False)
        cpu_before, client_before = cpu_seconds(cfg["cpu_pid"]), time.process_time()
        db_before = postgres_cpu_seconds() if database_cpu else 0.0
        measured = await _phase(client, cfg, cfg["requests"], tag + "m")
        cpu_after, client_after = cpu_seconds(cfg["cpu_pid"]), time.process_time()
        db_after = postgres_cpu_seconds() if database_cpu else 0.0
    measured["warmup_statuses"], measured["warmup_errors"] = warmup["statuses"], warmup["errors"]
    # CPU time the proxy (the fake upstream, for "direct") spent per measured request.
    measured["cpu_us_per_req"] = (cpu_after - cpu_before) * 1e6 / cfg["requests"]
    measured["client_cpu_us_per_req"] = (client_after - client_before) * 1e6 / cfg["requests"]
    # The PostgreSQL server's share: on a shared box it competes with the proxy for the same cores.
    measured["database_cpu_us_per_req"] = (db_after - db_before) * 1e6 / cfg["requests"] if database_cpu else None
    return measured


def loadgen_main(config_json: str) -> int:
    print(json.dumps(asyncio.run(_loadgen(json.loads(config_json)))), flush=True)
    return 0


# ----- subprocesses ----------------------------------------------------------------------------

@dataclass
class Processes:
    """Every long-running subprocess this benchmark started, so `stop_all` can end them."""

    workdir: Path
    running: list[subprocess.Popen] = field(default_factory=list)

    def start(self, name: str, cmd: list[str], ready: re.Pattern, env: dict | None = None) -> tuple[subprocess.Popen, int]:
        """Start `cmd` with output to a log file; wait (bounded) for the line that gives its port."""
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env={**clean_env(), "PYTHONUNBUFFERED": "1", **(env or {})})
        self.running.append(process)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            text = log_path.read_text(errors="replace")
            if match := ready.search(text):
                return process, int(match[1])
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode} before it was ready:\n{text}")
            time.sleep(0.05)
        raise RuntimeError(f"{name} was not ready within {READY_TIMEOUT_S:.0f}s:\n{log_path.read_text()}")

    def stop_all(self) -> None:
        for process in self.running:
            if process.poll() is None:
                process.terminate()
        for process in self.running:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self.running.clear()


def clean_env() -> dict[str, str]:
    """This environment without KEYBRAKE_DATABASE_URL: a path uses PostgreSQL only when told with --database."""
    return {name: value for name, value in os.environ.items() if name != DATABASE_ENV}


def keybrake_cli(home: Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run([PY, "-m", "keybrake_addon", "--home", str(home), *args], input=stdin,
                            capture_output=True, text=True, timeout=120, env=clean_env())
    if result.returncode != 0:
        raise RuntimeError(f"keybrake {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


def rss_mib(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    values = {}
    for name in ("VmRSS", "VmHWM"):
        match = re.search(rf"^{name}:\s+(\d+) kB", status, re.M)
        values[name] = int(match[1]) / 1024 if match else float("nan")
    return values


# ----- the four paths --------------------------------------------------------------------------

@dataclass
class Target:
    """One way of reaching the fake upstream, and the process whose CPU it adds."""

    name: str
    base_url: str
    token: str
    proxy: str | None = None
    cafile: str | None = None
    pid: int | None = None
    database_cpu: bool = False  # also read the (local) PostgreSQL server's CPU per request


def start_fake_stripe(procs: Processes) -> tuple[subprocess.Popen, int]:
    cmd = [PY, "-m", "keybrake_addon.fakes.fake_stripe", "--port", "0", "--secret", UPSTREAM_SECRET]
    deadline = time.monotonic() + 300  # it may still be being written by someone else: retry a while
    while True:
        probe = subprocess.run([PY, "-c", "import keybrake_addon.fakes.fake_stripe as f; f.FakeStripe"],
                               capture_output=True, text=True, timeout=60)
        if probe.returncode == 0 or time.monotonic() > deadline:
            break
        print("fake_stripe is not importable yet; retrying in 20 s", file=sys.stderr)
        time.sleep(20)
    return procs.start("fake-stripe", cmd, FAKE_READY)


def start_bare_mitmproxy(procs: Processes, upstream_port: int) -> Target:
    confdir = procs.workdir / "mitmproxy-conf"
    confdir.mkdir()
    script = procs.workdir / "redirect.py"
    script.write_text(REDIRECT_ADDON.format(port=upstream_port))
    cmd = [PY, "-c", "import sys; from mitmproxy.tools.main import mitmdump; sys.exit(mitmdump())",
           "-q", "--listen-host", "127.0.0.1", "--listen-port", "0", "--set", f"confdir={confdir}",
           "--set", "connection_strategy=lazy", "-s", str(script)]
    process, port = procs.start("mitmdump", cmd, MITM_READY)
    cafile = confdir / "mitmproxy-ca-cert.pem"
    if not cafile.exists():
        raise RuntimeError(f"mitmdump did not write its CA to {cafile}")
    return Target("mitmproxy", STRIPE_BASE, UPSTREAM_SECRET, f"http://127.0.0.1:{port}", str(cafile), process.pid)


def start_trimmed_mitmproxy(procs: Processes, upstream_port: int) -> Target:
    confdir = procs.workdir / "mitmproxy-trimmed-conf"
    confdir.mkdir()
    script = procs.workdir / "redirect-trimmed.py"
    script.write_text(REDIRECT_ADDON.format(port=upstream_port))
    process, port = procs.start(TRIMMED_PATH, [PY, "-c", TRIMMED_LAUNCHER, str(script), str(confdir)], MITM_READY)
    return Target(TRIMMED_PATH, STRIPE_BASE, UPSTREAM_SECRET, f"http://127.0.0.1:{port}",
                  str(confdir / "mitmproxy-ca-cert.pem"), process.pid)


def start_keybrake(procs: Processes, upstream_port: int, name: str = "keybrake",
                   metrics: bool = False) -> tuple[Target, Target, str | None]:
    """One `keybrake proxy` process serving both the forward path and the base-URL path; with
    `metrics`, also --metrics-port 0 (returned: its /metrics URL)."""
    home = procs.workdir / f"{name}-home"
    keybrake_cli(home, "init")
    keybrake_cli(home, "secret", "set", "stripe", stdin=UPSTREAM_SECRET + "\n")
    # A cap far above what a run spends: the cap checks (and, with alerts, the threshold checks) run
    # on every call, and nothing is ever refused.
    issued = json.loads(keybrake_cli(home, "issue", "--vendor", "stripe", "--daily-usd-cap", "100000000",
                                     "--allow-all", "--label", "bench", "--json"))
    if metrics:
        keybrake_cli(home, "alerts", "add", f"http://127.0.0.1:{AlertReceiver.port()}/keybrake", "--allow-private",
                     "--thresholds", "50,80,100", "--json")
    # --access-log off: bare mitmdump runs with -q, so neither writes a line per request.
    cmd = [PY, "-m", "keybrake_addon", "--home", str(home), "proxy", "--listen-port", "0", "--api-port", "0",
           "--upstream", f"stripe=http://127.0.0.1:{upstream_port}", "--access-log", "off",
           *(["--metrics-port", "0"] if metrics else [])]
    # The listeners' lines come from one callback, forward first, then API, health and metrics:
    # waiting for the last one asked for means every one above it is written.
    process, last_port = procs.start(name, cmd, KEYBRAKE_METRICS_READY if metrics else KEYBRAKE_API_READY)
    log = (procs.workdir / f"{name}.log").read_text()
    forward_port, api_port = int(KEYBRAKE_READY.search(log)[1]), int(KEYBRAKE_API_READY.search(log)[1])
    forward = Target(name, STRIPE_BASE, issued["vault_key"], f"http://127.0.0.1:{forward_port}",
                     str(home / "certs" / "keybrake-ca.pem"), process.pid)
    # httpx joins base_url ".../stripe" and "/v1/payment_intents" into ".../stripe/v1/payment_intents".
    baseurl = Target(f"{name}-baseurl", f"http://127.0.0.1:{api_port}/stripe", issued["vault_key"],
                     pid=process.pid)
    return forward, baseurl, f"http://127.0.0.1:{last_port}/metrics" if metrics else None


class AlertReceiver:
    """A loopback webhook receiver for the keybrake-metrics proxy's alert subscription: answers 204."""

    _server = None

    @classmethod
    def port(cls) -> int:
        if cls._server is None:
            import threading
            from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

            class Quiet(BaseHTTPRequestHandler):
                def do_POST(self):  # noqa: N802 - http.server's name
                    self.rfile.read(int(self.headers.get("content-length") or 0))
                    self.send_response(204)
                    self.end_headers()

                def log_message(self, *args):
                    pass

            cls._server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
            threading.Thread(target=cls._server.serve_forever, name="bench-alerts", daemon=True).start()
        return cls._server.server_address[1]


class Scraper:
    """Scrapes a /metrics URL every `interval_s` on a thread, as Prometheus would, for as long as it runs."""

    def __init__(self, url: str, interval_s: float) -> None:
        import threading

        self.url, self.interval_s = url, interval_s
        self.scrapes, self.failures, self.bytes = 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-scraper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import urllib.request

        while not self._stop.wait(self.interval_s):
            try:
                with urllib.request.urlopen(self.url, timeout=10) as answer:
                    self.bytes += len(answer.read())
                self.scrapes += 1
            except OSError:
                self.failures += 1

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(timeout=15)
        return {"interval_s": self.interval_s, "scrapes": self.scrapes, "failures": self.failures,
                "mean_bytes": self.bytes / self.scrapes if self.scrapes else 0}


def init_pg_home(workdir: Path, database_url: str) -> Path:
    """The PostgreSQL replica's home (`keybrake --database URL init`, Stripe secret set). The batched
    ledger runs use it too: a database accepts only the master key that first wrote it."""
    home = workdir / "keybrake-pg-home"
    keybrake_cli(home, "--database", database_url, "init")
    keybrake_cli(home, "--database", database_url, "secret", "set", "stripe", stdin=UPSTREAM_SECRET + "\n")
    return home


def start_keybrake_pg(procs: Processes, home: Path, upstream_port: int, database_url: str) -> Target:
    """One `keybrake proxy` replica on PostgreSQL, with a key of its own (capped far above a run)."""
    database = ("--database", database_url)
    issued = json.loads(keybrake_cli(home, *database, "issue", "--vendor", "stripe", "--daily-usd-cap", "100000000",
                                     "--allow-all", "--label", "bench-pg", "--json"))
    cmd = [PY, "-m", "keybrake_addon", "--home", str(home), *database, "proxy", "--listen-port", "0",
           "--upstream", f"stripe=http://127.0.0.1:{upstream_port}", "--access-log", "off"]
    process, port = procs.start(PG_PATH, cmd, KEYBRAKE_READY)
    return Target(PG_PATH, STRIPE_BASE, issued["vault_key"], f"http://127.0.0.1:{port}",
                  str(home / "certs" / "keybrake-ca.pem"), process.pid, database_cpu=local_database(database_url))


# ----- measuring -------------------------------------------------------------------------------

def run_load(target: Target, concurrency: int, requests: int, warmup: int, fake_pid: int) -> dict:
    """One measured run in a fresh load-generator process."""
    cfg = {"base_url": target.base_url, "proxy": target.proxy, "cafile": target.cafile, "token": target.token,
           "concurrency": concurrency, "requests": requests, "warmup": max(warmup, 2 * concurrency),
           "cpu_pid": target.pid or fake_pid, "database_cpu": target.database_cpu}
    result = subprocess.run([PY, os.path.abspath(__file__), "--loadgen", json.dumps(cfg)], capture_output=True,
                            text=True, timeout=120 + requests)
    if result.returncode != 0:
        raise RuntimeError(f"load generator failed for {target.name} c={concurrency}:\n{result.stderr}")
    run = json.loads(result.stdout.strip().splitlines()[-1])
    run["cpu_process"] = "proxy" if target.pid else "fake upstream"
    run.update(path=target.name, concurrency=concurrency)
    return run


def bad_responses(run: dict) -> int:
    statuses = {**run["statuses"]}
    for status, count in run["warmup_statuses"].items():
        statuses[status] = statuses.get(status, 0) + count
    non_ok = sum(count for status, count in statuses.items() if status != "200")
    ungated = run["ok"] - run["gated"] if run["path"] in GATED_PATHS else 0  # a 200 that skipped the gate
    return non_ok + ungated + sum(run["errors"].values()) + sum(run["warmup_errors"].values())


def measure_all(targets: dict[str, Target], concurrencies: list[int], repeats: int, requests: int, warmup: int,
                fake_pid: int) -> list[dict]:
    runs = []
    paths = tuple(targets)
    for repeat in range(repeats):
        order = paths[repeat % len(paths):] + paths[:repeat % len(paths)]  # rotate: no path always goes first
        for concurrency in concurrencies:
            for name in order:
                run = run_load(targets[name], concurrency, requests, warmup, fake_pid)
                run["repeat"] = repeat
                runs.append(run)
                print(f"  repeat {repeat + 1}/{repeats}  c={concurrency:<3} {name:<16} "
                      f"{run['throughput']:8.1f} req/s  p50 {run['p50_ms']:7.2f} ms  p99 {run['p99_ms']:7.2f} ms  "
                      f"cpu {run['cpu_us_per_req']:6.0f} us/req  bad {bad_responses(run)}", flush=True)
    return runs


def summarise(runs: list[dict], concurrencies: list[int]) -> dict:
    summary: dict = {}
    paths = list(dict.fromkeys(r["path"] for r in runs))
    for concurrency in concurrencies:
        for name in paths:
            mine = [r for r in runs if r["path"] == name and r["concurrency"] == concurrency]
            summary.setdefault(str(concurrency), {})[name] = {
                "throughput": statistics.median(r["throughput"] for r in mine),
                "p50_ms": statistics.median(r["p50_ms"] for r in mine),
                "p99_ms": statistics.median(r["p99_ms"] for r in mine),
                "cpu_us_per_req": statistics.median(r["cpu_us_per_req"] for r in mine),
                "client_cpu_us_per_req": statistics.median(r["client_cpu_us_per_req"] for r in mine),
                "database_cpu_us_per_req": _median_or_none([r.get("database_cpu_us_per_req") for r in mine]),
                "runs": len(mine),
                "bad_responses": sum(bad_responses(r) for r in mine),
            }
    return summary


def _median_or_none(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


def _versus(path: dict, mitm: dict, direct: dict) -> dict:
    return {
        "throughput_ratio": path["throughput"] / mitm["throughput"],
        "p50_ratio": path["p50_ms"] / mitm["p50_ms"],
        "p99_ratio": path["p99_ms"] / mitm["p99_ms"],
        "added_p50_ms_vs_mitmproxy": path["p50_ms"] - mitm["p50_ms"],
        "added_p50_ms_vs_direct": path["p50_ms"] - direct["p50_ms"],
        "added_cpu_us_per_req_vs_mitmproxy": path["cpu_us_per_req"] - mitm["cpu_us_per_req"],
        "proxy_cpu_ratio": path["cpu_us_per_req"] / mitm["cpu_us_per_req"],
    }


def ratios(summary: dict) -> dict:
    """Per concurrency: the forward keybrake path vs bare mitmproxy (flat, as before), and the
    base-URL path (and the PostgreSQL replica, when measured) vs bare mitmproxy under their names."""
    out = {}
    for concurrency, paths in summary.items():
        mitm, direct = paths["mitmproxy"], paths["direct"]
        out[concurrency] = {**_versus(paths["keybrake"], mitm, direct),
                            **{name: _versus(paths[name], mitm, direct)
                               for name in ("keybrake-baseurl", PG_PATH, METRICS_PATH, TRIMMED_PATH) if name in paths}}
        if TRIMMED_PATH in paths:  # the gate's own cost: Keybrake against the same trimmed mitmproxy
            out[concurrency]["vs_trimmed"] = {name: _versus(paths[name], paths[TRIMMED_PATH], direct)
                                              for name in ("keybrake", PG_PATH) if name in paths}
    return out


def paired_added_p50(runs: list[dict], concurrencies: list[int]) -> dict:
    """Per concurrency and gated path: the median over repeats of (its p50 - bare mitmproxy's p50) in
    the same repeat. Runs of one repeat are seconds apart, so this cancels slow drifts in machine load
    that the median of per-path medians does not. Reported next to the targets, not judged."""
    out: dict = {}
    measured = {run["path"] for run in runs}
    for concurrency in concurrencies:
        for name in (path for path in GATED_PATHS if path in measured):
            diffs = []
            for run in runs:
                if run["path"] == name and run["concurrency"] == concurrency:
                    mitm = next(r for r in runs if r["path"] == "mitmproxy" and r["concurrency"] == concurrency
                                and r["repeat"] == run["repeat"])
                    diffs.append(run["p50_ms"] - mitm["p50_ms"])
            out.setdefault(str(concurrency), {})[name] = {"median_ms": statistics.median(diffs),
                                                          "each_ms": [round(d, 2) for d in diffs]}
    return out


def metrics_cost(runs: list[dict], concurrencies: list[int]) -> dict:
    """Per concurrency: keybrake-metrics against keybrake (metrics off), paired by repeat, next to
    the spread of keybrake's own runs (the noise the difference must stand out of). Not judged."""
    out = {}
    for concurrency in concurrencies:
        def mine(name):
            return {r["repeat"]: r for r in runs if r["path"] == name and r["concurrency"] == concurrency}

        off, on = mine("keybrake"), mine(METRICS_PATH)
        pairs = [(off[repeat], on[repeat]) for repeat in sorted(off) if repeat in on]
        if not pairs:
            continue
        throughputs = [r["throughput"] for r in off.values()]
        out[str(concurrency)] = {
            "throughput_ratio_on_vs_off": statistics.median(b["throughput"] / a["throughput"] for a, b in pairs),
            "added_p50_ms": statistics.median(b["p50_ms"] - a["p50_ms"] for a, b in pairs),
            "added_cpu_us_per_req": statistics.median(b["cpu_us_per_req"] - a["cpu_us_per_req"] for a, b in pairs),
            "off_throughput_spread_pct": 100 * (max(throughputs) - min(throughputs)) / statistics.median(throughputs),
            "pairs": len(pairs),
        }
    return out


def judge(summary: dict, ratio: dict, concurrencies: list[int], ledger: dict, batched: dict) -> list[dict]:
    """PASS/MISS per target. `source`: "earlier" for the first targets, "issue" for the issue's,
    "rebuild" for the rebuilt ledger's (the SQLite throughput target is the issue's and the rebuild's)."""
    throughput_at = "16" if 16 in concurrencies else str(max(concurrencies))
    throughput = ratio[throughput_at]["throughput_ratio"]
    checks = [
        {"source": "earlier", "target": f"throughput keybrake/mitmproxy at c={throughput_at} >= "
                                        f"{TARGET_THROUGHPUT_RATIO}",
         "value": throughput, "pass": throughput >= TARGET_THROUGHPUT_RATIO},
    ]
    for concurrency in summary:
        value = ratio[concurrency]["p50_ratio"]
        checks.append({"source": "earlier", "target": f"p50 keybrake/mitmproxy at c={concurrency} <= {TARGET_P50_RATIO}",
                       "value": value, "pass": value <= TARGET_P50_RATIO})
    checks.append({"source": "issue+rebuild", "target": f"throughput keybrake/mitmproxy at c={throughput_at} >= "
                                                        f"{TARGET_THROUGHPUT_RATIO_ISSUE}",
                   "value": throughput, "pass": throughput >= TARGET_THROUGHPUT_RATIO_ISSUE})
    lowest = "1" if 1 in concurrencies else str(min(concurrencies))
    added = ratio[lowest]["added_p50_ms_vs_mitmproxy"]
    checks.append({"source": "issue", "target": f"added p50 keybrake - mitmproxy at c={lowest} <= "
                                                f"{TARGET_ADDED_P50_MS} ms",
                   "value": added, "pass": added <= TARGET_ADDED_P50_MS})
    per_s = ledger["with_housekeeper"]["reservations_per_s"]
    checks.append({"source": "issue", "target": f"ledger alone (as the proxy runs it) >= {TARGET_LEDGER_PER_S:.0f} "
                                                "reservations/s on one thread",
                   "value": per_s, "pass": per_s >= TARGET_LEDGER_PER_S})
    checks.append({"source": "rebuild", "target": f"added p50 keybrake - mitmproxy at c={lowest} <= "
                                                  f"{TARGET_ADDED_P50_MS_REBUILD} ms",
                   "value": added, "pass": added <= TARGET_ADDED_P50_MS_REBUILD})
    if PG_PATH in ratio[throughput_at]:
        pg = ratio[throughput_at][PG_PATH]["throughput_ratio"]
        checks.append({"source": "rebuild", "target": f"throughput keybrake-pg (one replica)/mitmproxy at "
                                                      f"c={throughput_at} >= {TARGET_PG_THROUGHPUT_RATIO}",
                       "value": pg, "pass": pg >= TARGET_PG_THROUGHPUT_RATIO})
    for backend, figures in batched.items():
        if backend not in TARGET_BATCHED_PER_S:
            continue  # sqlite-thread-only: reported, not judged (the gate runs with the fast path)
        callers = str(max(int(c) for c in figures))
        value = figures[callers]["pairs_per_s"]
        goal = TARGET_BATCHED_PER_S[backend]
        checks.append({"source": "rebuild", "target": f"ledger batched ({backend}, {callers} callers, one key) >= "
                                                      f"{goal:.0f} admit+settle pairs/s",
                       "value": value, "pass": value >= goal})
    return checks


def user_figures(summary: dict, ratio: dict, concurrencies: list[int]) -> dict:
    lowest = str(min(concurrencies))
    highest = "16" if 16 in concurrencies else str(max(concurrencies))  # the concurrency the targets use
    added_gate = ratio[lowest]["added_p50_ms_vs_mitmproxy"]
    added_total = ratio[lowest]["added_p50_ms_vs_direct"]
    return {
        "added_p50_ms_gate_only": added_gate,
        "added_p50_ms_whole_proxy": added_total,
        "gate_share_of_300ms_call_pct": 100 * added_gate / TYPICAL_STRIPE_CALL_MS,
        "whole_proxy_share_of_300ms_call_pct": 100 * added_total / TYPICAL_STRIPE_CALL_MS,
        "baseurl_added_p50_ms_vs_direct": ratio[lowest]["keybrake-baseurl"]["added_p50_ms_vs_direct"],
        "keybrake_throughput_at": int(highest),
        "headroom_over_stripe_100_writes_per_s": summary[highest]["keybrake"]["throughput"] / STRIPE_LIVE_WRITES_PER_S,
        "baseurl_headroom_over_stripe_100_writes_per_s":
            summary[highest]["keybrake-baseurl"]["throughput"] / STRIPE_LIVE_WRITES_PER_S,
    }


# ----- the ledger alone ------------------------------------------------------------------------

LEDGER_REPEATS = 3


def _ledger_run(workdir: Path, iterations: int, tag: str, *, as_proxy: bool) -> dict:
    """One timed loop of SqliteLedger.admit + settle for one PaymentIntent, on this thread, fresh home.

    as_proxy: open the ledger the way `keybrake proxy` does (background_checkpoints=True, so commits
    leave the WAL alone) with a running Housekeeper doing the PASSIVE checkpoints and heartbeats on
    its own thread, and pass its run_id like the gate does. Otherwise: the plain CLI-style ledger,
    whose commits run SQLite's auto-checkpoint inline (the original measurement).
    """
    from keybrake_addon.home import KeybrakeHome
    from keybrake_addon.installation import initialise, open_installation
    from keybrake_addon.ledger.base import AdmitRequest, CallFacts, Resolution, SettleRequest
    from keybrake_addon.ledger.housekeeping import Housekeeper
    from keybrake_addon.ledger.times import utc_now
    from keybrake_addon.vault.issuance import KeyRequest, issue_key
    from keybrake_addon.vault.vault_keys import hash_vault_key
    from keybrake_addon.vendors.base import CostEstimate

    home = KeybrakeHome.resolve(workdir / f"ledger-home-{tag}")
    initialise(home)
    installation = open_installation(home, background_checkpoints=as_proxy)
    keeper = Housekeeper(installation) if as_proxy else None
    try:
        installation.vault.put("stripe", "default", UPSTREAM_SECRET)
        issued = issue_key(installation.ledger, installation.master_key,
                           KeyRequest(vendor="stripe", no_cap=True, allow_all=True, label="bench-ledger"))
        key_hash = hash_vault_key(issued.vault_key)
        ledger = installation.ledger
        estimate = CostEstimate(usd_micros=1_000_000, amount_minor=100, currency="usd")
        run_id = keeper.run_id if keeper else None

        admit_seconds = [0.0]

        def one(index: int) -> None:
            call = CallFacts("stripe", "POST", ENDPOINT, f"ledger-{index}", utc_now())
            began = time.perf_counter()
            admission = ledger.admit(AdmitRequest(key_hash, call, estimate, run_id=run_id))
            admit_seconds[0] += time.perf_counter() - began
            assert admission.refusal is None, admission.refusal
            ledger.settle(SettleRequest(
                audit_id=admission.audit_id, reservation_id=admission.reservation_id, resolution=Resolution.SETTLE,
                actual_micros=1_000_000, status=200, object_ids=(f"pi_{index}",), vendor_request_id=f"req_{index}",
                amount_minor=100, currency="usd", replayed=False, duration_ms=1.0))

        for index in range(min(100, iterations)):  # warm-up
            one(-index - 1)
        admit_seconds[0] = 0.0
        wall0, thread0, process0 = time.perf_counter(), time.thread_time(), time.process_time()
        for index in range(iterations):
            one(index)
        wall = time.perf_counter() - wall0
        thread_cpu, process_cpu = time.thread_time() - thread0, time.process_time() - process0
        wal = home.database.with_name(home.database.name + "-wal")  # before close, which removes it
        wal_mib = wal.stat().st_size / 2**20 if wal.exists() else 0.0
    finally:
        if keeper is not None:
            keeper.stop()
        installation.close()
    return {"seconds": wall, "reservations_per_s": iterations / wall, "us_per_reservation": wall * 1e6 / iterations,
            # The admit transactions alone (the reservation proper), timed inside the same loop.
            "admits_per_s": iterations / admit_seconds[0],
            "thread_cpu_us_per_pair": thread_cpu * 1e6 / iterations,
            # CPU of the process's other threads while the loop ran: the Housekeeper's checkpoints.
            "other_threads_cpu_us_per_pair": max(0.0, process_cpu - thread_cpu) * 1e6 / iterations,
            "wal_mib_after": wal_mib}


def ledger_alone(workdir: Path, iterations: int, repeats: int = LEDGER_REPEATS) -> dict:
    """Both ledger measurements, interleaved (so machine noise hits both alike), medians over repeats."""
    runs: dict[str, list[dict]] = {"with_housekeeper": [], "without_housekeeper": []}
    for repeat in range(repeats):
        order = ("with_housekeeper", "without_housekeeper")
        for variant in (order if repeat % 2 == 0 else order[::-1]):
            runs[variant].append(_ledger_run(workdir, iterations, f"{variant}-{repeat}",
                                             as_proxy=variant == "with_housekeeper"))
    out = {}
    for variant, mine in runs.items():
        out[variant] = {"iterations": iterations, "repeats": repeats,
                        **{name: statistics.median(run[name] for run in mine) for name in mine[0]},
                        "reservations_per_s_each": [round(run["reservations_per_s"], 1) for run in mine]}
    return out


# ----- the ledger batched, as the gate awaits it -------------------------------------------------

BATCHED_CALLERS = (1, 16, 64)
BATCHED_DRAIN_TIMEOUT_S = 60.0
PAIR_MICROS = 1_000_000  # each call reserves and settles $1.00


def _bench_installation(home_root: Path, database_url: str | None):
    """The home's installation as `keybrake proxy` opens it (initialised on first use), holding the
    Stripe secret; `database_url` puts its ledger in PostgreSQL instead of the home's SQLite file."""
    from keybrake_addon.home import KeybrakeHome
    from keybrake_addon.installation import initialise, open_installation
    from keybrake_addon.ledger.urls import parse_database_url

    home = KeybrakeHome.resolve(home_root)
    database = parse_database_url(database_url) if database_url else None
    if not home.root.exists():
        initialise(home, database)
        installation = open_installation(home, database=database)
        installation.vault.put("stripe", "default", UPSTREAM_SECRET)
        installation.close()
    return open_installation(home, database=database, background_checkpoints=True)


async def _batched_phase(ledger, key_hash: str, run_id: str, callers: int, pairs: int, tag: str) -> dict:
    """`callers` asyncio tasks share `pairs` calls: each awaits ledger.admit, then ledger.settle, as
    the gate does (minus the vendor). The clock stops once every settlement has committed."""
    from keybrake_addon.ledger.base import AdmitRequest, CallFacts, Resolution, SettleRequest
    from keybrake_addon.ledger.times import utc_now
    from keybrake_addon.vendors.base import CostEstimate

    estimate = CostEstimate(usd_micros=PAIR_MICROS, amount_minor=100, currency="usd")
    next_index = iter(range(pairs))
    admit_latencies: list[float] = []

    async def caller() -> None:
        for index in next_index:  # shared iterator: each call made once
            call = CallFacts("stripe", "POST", ENDPOINT, f"{tag}-{index}", utc_now(), time.monotonic())
            began = time.perf_counter()
            admission = await ledger.admit(AdmitRequest(key_hash, call, estimate, run_id=run_id))
            admit_latencies.append(time.perf_counter() - began)
            if admission.refusal is not None:
                raise RuntimeError(f"the ledger refused a benchmark call: {admission.refusal}")
            ledger.settle(SettleRequest(
                audit_id=admission.audit_id, reservation_id=admission.reservation_id, resolution=Resolution.SETTLE,
                actual_micros=PAIR_MICROS, status=200, object_ids=(f"pi_{tag}_{index}",),
                vendor_request_id=f"req_{tag}_{index}", amount_minor=100, currency="usd", replayed=False,
                duration_ms=1.0))

    wall0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(caller() for _ in range(callers)))
    drained = await ledger.drain(BATCHED_DRAIN_TIMEOUT_S)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    if drained.left:
        raise RuntimeError(f"{drained.left} settlements were not committed within {BATCHED_DRAIN_TIMEOUT_S:g} s")
    admit_latencies.sort()
    return {"seconds": wall, "pairs_per_s": pairs / wall, "admit_p50_ms": percentile(admit_latencies, 0.5) * 1000,
            "admit_p99_ms": percentile(admit_latencies, 0.99) * 1000,
            # Everything this process spent: the event loop, the ledger thread, the driver.
            "process_cpu_us_per_pair": cpu * 1e6 / pairs, "drain_ms": drained.seconds * 1000}


def _batched_run(home_root: Path, database_url: str | None, callers: int, pairs: int, *,
                 inline: bool = True) -> dict:
    """One timed run on a fresh key of a (reused) home: the AsyncLedger, Housekeeper and connections
    the gate opens, warmed up first; afterwards the key's totals must show every pair settled.
    inline=False: SQLite without the on-loop fast path, so every admit and settlement goes through
    the ledger thread's group commit (what the gate falls back to when the write lock is held)."""
    from keybrake_addon.ledger.housekeeping import Housekeeper
    from keybrake_addon.vault.issuance import KeyRequest, issue_key
    from keybrake_addon.vault.vault_keys import hash_vault_key

    installation = _bench_installation(home_root, database_url)
    keeper = ledger = None
    try:
        keeper = Housekeeper(installation)
        ledger = installation.async_ledger() if inline else _thread_only_ledger(installation)
        issued = issue_key(installation.ledger, installation.master_key,
                           KeyRequest(vendor="stripe", no_cap=True, allow_all=True, label="bench-batched"))
        key_hash, tag = hash_vault_key(issued.vault_key), uuid.uuid4().hex[:12]
        warmup = min(pairs, max(100, 2 * callers))

        async def both_phases() -> dict:
            await _batched_phase(ledger, key_hash, keeper.run_id, callers, warmup, tag + "w")
            return await _batched_phase(ledger, key_hash, keeper.run_id, callers, pairs, tag + "m")

        figures = asyncio.run(both_phases())
        key = installation.ledger.get_key(issued.key_id)
        expected = (warmup + pairs) * PAIR_MICROS
        if (key.spent_micros, key.reserved_micros) != (expected, 0):
            raise RuntimeError(f"after the run the key shows spent {key.spent_micros} reserved {key.reserved_micros} "
                               f"micros; expected {expected} and 0")
    finally:
        if ledger is not None:
            ledger.close()
        if keeper is not None:
            keeper.stop()
        installation.close()
    return figures


def _thread_only_ledger(installation):
    from keybrake_addon.ledger.executor import AsyncLedger
    from keybrake_addon.ledger.opening import open_ledger

    return AsyncLedger(open_ledger(installation.database, background_checkpoints=True))


def ledger_batched(workdir: Path, pg: tuple[Path, str] | None, pairs: int, repeats: int = LEDGER_REPEATS) -> dict:
    """Pairs/s through AsyncLedger on one hot key at 1, 16 and 64 callers, per backend (PostgreSQL
    only with `pg`: its home and URL); runs interleaved, backend order alternating, medians over repeats."""
    homes = {"sqlite": (workdir / "batched-sqlite-home", None, True),
             "sqlite-thread-only": (workdir / "batched-sqlite-home", None, False)}
    if pg:
        homes["postgresql"] = (*pg, True)
    runs: dict = {backend: {str(c): [] for c in BATCHED_CALLERS} for backend in homes}
    for repeat in range(repeats):
        for callers in BATCHED_CALLERS:
            order = list(homes) if repeat % 2 == 0 else list(homes)[::-1]
            for backend in order:
                home, url, inline = homes[backend]
                run = _batched_run(home, url, callers, pairs, inline=inline)
                runs[backend][str(callers)].append(run)
                print(f"  repeat {repeat + 1}/{repeats}  {backend:<18} {callers:>2} callers  "
                      f"{run['pairs_per_s']:8.0f} pairs/s  admit p50 {run['admit_p50_ms']:6.2f} ms  "
                      f"p99 {run['admit_p99_ms']:6.2f} ms  cpu {run['process_cpu_us_per_pair']:5.0f} us/pair",
                      flush=True)
    return {backend: {callers: {"pairs": pairs, "repeats": repeats,
                                **{name: statistics.median(run[name] for run in mine) for name in mine[0]},
                                "pairs_per_s_each": [round(run["pairs_per_s"]) for run in mine]}
                      for callers, mine in by_callers.items()}
            for backend, by_callers in runs.items()}


# ----- report ----------------------------------------------------------------------------------

def machine_info() -> dict:
    import httpx
    from mitmproxy.version import VERSION as mitmproxy_version

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "mitmproxy": mitmproxy_version, "httpx": httpx.__version__, "platform": platform.platform(),
            "loadavg_at_start": os.getloadavg()}


def print_batched(result: dict) -> None:
    batched = result["ledger_batched"]
    any_figures = next(iter(next(iter(batched.values())).values()))
    print(f"\nLedger batched (AsyncLedger as the gate awaits it: asyncio callers on one loop, one hot key, admit then "
          f"settle, clock stopped after drain; medians of {any_figures['repeats']} runs of {any_figures['pairs']} "
          "pairs):")
    for backend, by_callers in batched.items():
        for callers, figures in by_callers.items():
            print(f"  {backend:<18} {callers:>2} callers: {figures['pairs_per_s']:7.0f} pairs/s  admit p50 "
                  f"{figures['admit_p50_ms']:.2f} ms  p99 {figures['admit_p99_ms']:.2f} ms  process CPU "
                  f"{figures['process_cpu_us_per_pair']:.0f} us/pair  runs {figures['pairs_per_s_each']}")
    if "postgresql" not in batched:
        print(f"  postgresql: skipped ({SKIPPED_PG})")


def print_report(result: dict) -> None:
    summary, ratio = result["summary"], result["ratios"]
    print("\nMedians over repeats (throughput: req/s; latency: ms; CPU: proxy process, or the fake for direct)")
    header = f"{'c':>3}  {'path':<16} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>10} {'bad':>4}"
    print(header)
    print("-" * len(header))
    for concurrency, paths in summary.items():
        for name, figures in paths.items():
            print(f"{concurrency:>3}  {name:<16} {figures['throughput']:8.1f} {figures['p50_ms']:8.2f} "
                  f"{figures['p99_ms']:8.2f} {figures['cpu_us_per_req']:10.0f} {figures['bad_responses']:4d}")
    print("\nVs bare mitmproxy (keybrake: the same CONNECT + TLS; keybrake-baseurl: plain http, no CONNECT/TLS; "
          "keybrake-pg: CONNECT + TLS, ledger in PostgreSQL, one replica)")
    for concurrency, forward in ratio.items():
        others = [(name, forward[name]) for name in ("keybrake-baseurl", PG_PATH, METRICS_PATH) if name in forward]
        for name, figures in [("keybrake", forward), *others]:
            paired = result["paired_added_p50_ms"][concurrency][name]
            print(f"  c={concurrency:<3} {name:<16} throughput x{figures['throughput_ratio']:.3f}  "
                  f"p50 x{figures['p50_ratio']:.3f}  p99 x{figures['p99_ratio']:.3f}  "
                  f"added p50 {figures['added_p50_ms_vs_mitmproxy']:+.2f} ms (paired {paired['median_ms']:+.2f})  "
                  f"added CPU {figures['added_cpu_us_per_req_vs_mitmproxy']:+.0f} us/req "
                  f"(proxy CPU x{figures['proxy_cpu_ratio']:.2f})")
    print(f"\nVs {TRIMMED_PATH} (mitmproxy with only the addons Keybrake keeps: what the gate itself costs)")
    for concurrency, forward in ratio.items():
        if TRIMMED_PATH in forward:
            print(f"  c={concurrency:<3} {TRIMMED_PATH} vs bare mitmproxy: throughput "
                  f"x{forward[TRIMMED_PATH]['throughput_ratio']:.3f}  added CPU "
                  f"{forward[TRIMMED_PATH]['added_cpu_us_per_req_vs_mitmproxy']:+.0f} us/req")
        for name, figures in forward.get("vs_trimmed", {}).items():
            print(f"  c={concurrency:<3} {name:<16} throughput x{figures['throughput_ratio']:.3f}  "
                  f"added p50 {figures['added_p50_ms_vs_mitmproxy']:+.2f} ms  "
                  f"added CPU {figures['added_cpu_us_per_req_vs_mitmproxy']:+.0f} us/req")
    if PG_PATH not in next(iter(summary.values())):
        print(f"\nkeybrake-pg: skipped ({SKIPPED_PG})")
    else:
        server = {concurrency: paths[PG_PATH]["database_cpu_us_per_req"] for concurrency, paths in summary.items()}
        if all(value is not None for value in server.values()):
            print("\nkeybrake-pg: the PostgreSQL server's own CPU (every postgres process on this host) per request: "
                  + ", ".join(f"c={concurrency} {value:.0f} us" for concurrency, value in server.items())
                  + " (on top of the proxy's; on a shared box both compete for the same cores)")
        else:
            print("\nkeybrake-pg: the PostgreSQL server is not on this host: its CPU per request is not measured")
    if result.get("metrics_cost"):
        scraper = result["metrics_scraper"]
        print(f"\nMetrics on (keybrake-metrics, scraped every {scraper['interval_s']:g} s: {scraper['scrapes']} scrapes, "
              f"{scraper['failures']} failed, {scraper['mean_bytes'] / 1024:.0f} KiB each) vs off (keybrake), paired:")
        for concurrency, cost in result["metrics_cost"].items():
            print(f"  c={concurrency:<3} throughput x{cost['throughput_ratio_on_vs_off']:.3f} (off's own spread "
                  f"{cost['off_throughput_spread_pct']:.1f}%)  p50 {cost['added_p50_ms']:+.2f} ms  "
                  f"CPU {cost['added_cpu_us_per_req']:+.0f} us/req  ({cost['pairs']} pairs)")
    print("\nTargets")
    for check in result["targets"]:
        print(f"  {'PASS' if check['pass'] else 'MISS'}  [{check['source']}] {check['target']}: {check['value']:.3f}")
    print("\nLedger alone (admit + settle for one PaymentIntent, one thread; medians of "
          f"{result['ledger_alone']['with_housekeeper']['repeats']} runs of "
          f"{result['ledger_alone']['with_housekeeper']['iterations']} pairs):")
    for variant, title in (("with_housekeeper", "as the proxy runs it (background checkpoints + Housekeeper)"),
                           ("without_housekeeper", "old measurement (inline auto-checkpoints, no Housekeeper)")):
        ledger = result["ledger_alone"][variant]
        print(f"  {title}: {ledger['reservations_per_s']:.0f} reservations/s ({ledger['us_per_reservation']:.0f} us "
              f"wall per pair; loop thread CPU {ledger['thread_cpu_us_per_pair']:.0f} us/pair, other threads "
              f"{ledger['other_threads_cpu_us_per_pair']:.0f} us/pair; runs {ledger['reservations_per_s_each']}; "
              f"WAL after {ledger['wal_mib_after']:.1f} MiB); the admit transactions alone: "
              f"{ledger['admits_per_s']:.0f}/s")
    print_batched(result)
    print("RSS after the run: " + ", ".join(f"{name} {mem['VmRSS']:.0f} MiB (peak {mem['VmHWM']:.0f})"
                                          for name, mem in result["rss_mib"].items()))
    print(f"Keybrake's WAL file after the run: {result['keybrake_wal_mib']:.1f} MiB")
    users = result["user_figures"]
    print(f"\nFor users: the gate adds {users['added_p50_ms_gate_only']:.2f} ms p50 over bare mitmproxy "
          f"({users['gate_share_of_300ms_call_pct']:.2f}% of a {TYPICAL_STRIPE_CALL_MS:.0f} ms Stripe call); "
          f"the whole proxy adds {users['added_p50_ms_whole_proxy']:.2f} ms over direct "
          f"({users['whole_proxy_share_of_300ms_call_pct']:.2f}%); the base-URL route adds "
          f"{users['baseurl_added_p50_ms_vs_direct']:.2f} ms over direct.")
    print(f"           Keybrake at c={users['keybrake_throughput_at']} is "
          f"{users['headroom_over_stripe_100_writes_per_s']:.1f}x (forward) and "
          f"{users['baseurl_headroom_over_stripe_100_writes_per_s']:.1f}x (base URL) Stripe's live limit of "
          f"{STRIPE_LIVE_WRITES_PER_S:.0f} writes/s.")
    print(f"\nWall time {result['wall_s']:.0f} s; load average at start "
          f"{' '.join(f'{x:.2f}' for x in result['machine']['loadavg_at_start'])}, "
          f"at end {' '.join(f'{x:.2f}' for x in result['loadavg_at_end'])}")


# ----- main ------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: few requests, one repeat (< 60 s)")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated, e.g. 1,16 (default 1,16,64)")
    parser.add_argument("--requests", type=int, help="measured requests per run (default 1000; quick 60)")
    parser.add_argument("--warmup", type=int, help="warm-up requests per run (default 100; quick 20)")
    parser.add_argument("--repeats", type=int, help="runs per (path, concurrency) (default 5; quick 1)")
    parser.add_argument("--ledger-iterations", type=int,
                        help="admit+settle pairs per ledger run, 3 runs per variant (default 5000; quick 300)")
    parser.add_argument("--batched-pairs", type=int,
                        help="admit+settle pairs per batched-ledger run, 3 runs per (backend, callers) "
                             "(default 5000; quick 300)")
    parser.add_argument("--database", metavar="URL",
                        help="a throwaway PostgreSQL database (postgresql://...) for keybrake-pg and the PostgreSQL "
                             "ledger figures; the benchmark fills it with keys and audit rows. Without it, they are "
                             "skipped.")
    parser.add_argument("--metrics", action="store_true",
                        help="also measure keybrake-metrics: a second keybrake proxy with --metrics-port, scraped "
                             "all along, compared with metrics off")
    parser.add_argument("--scrape-interval", type=float, default=1.0, metavar="S",
                        help="with --metrics: seconds between scrapes (default 1; Prometheus usually waits 15)")
    parser.add_argument("--json", dest="json_path", help="write every figure as JSON here")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--loadgen", help=argparse.SUPPRESS)  # internal: run as the load generator
    args = parser.parse_args(argv)
    quick = args.quick
    args.requests = args.requests or (60 if quick else 1000)
    args.warmup = args.warmup if args.warmup is not None else (20 if quick else 100)
    args.repeats = args.repeats or (1 if quick else 5)
    args.ledger_iterations = args.ledger_iterations or (300 if quick else 5000)
    args.batched_pairs = args.batched_pairs or (300 if quick else 5000)
    if args.database and not args.database.startswith(("postgresql://", "postgres://")):
        parser.error("--database needs a postgresql:// URL (the SQLite paths always use their own home)")
    args.concurrency_list = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    if not args.concurrency_list or min(args.concurrency_list) < 1:
        parser.error("--concurrency needs positive integers")
    return args


def redacted_argv(database_url: str | None) -> list[str]:
    """This run's arguments, a password in the database URL replaced (the command goes into reports)."""
    if not database_url:
        return sys.argv[1:]
    from keybrake_addon.ledger.urls import parse_database_url

    shown = parse_database_url(database_url).redacted()
    return [arg.replace(database_url, shown) for arg in sys.argv[1:]]


def run_benchmark(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    machine = machine_info()
    workdir = Path(tempfile.mkdtemp(prefix="keybrake-bench-"))
    procs = Processes(workdir)
    try:
        print(f"ledger alone: {LEDGER_REPEATS} x 2 x {args.ledger_iterations} admit+settle pairs ...", flush=True)
        ledger = ledger_alone(workdir, args.ledger_iterations)
        print(f"ledger batched: {LEDGER_REPEATS} x {len(BATCHED_CALLERS)} callers x "
              f"{'2 backends' if args.database else 'SQLite only'} x {args.batched_pairs} pairs ...", flush=True)
        pg_home = init_pg_home(workdir, args.database) if args.database else None
        batched = ledger_batched(workdir, (pg_home, args.database) if pg_home else None, args.batched_pairs)
        fake, fake_port = start_fake_stripe(procs)
        keybrake_forward, keybrake_baseurl, _ = start_keybrake(procs, fake_port)
        targets = {
            "direct": Target("direct", f"http://127.0.0.1:{fake_port}", UPSTREAM_SECRET),
            "mitmproxy": start_bare_mitmproxy(procs, fake_port),
            TRIMMED_PATH: start_trimmed_mitmproxy(procs, fake_port),
            "keybrake": keybrake_forward,
            "keybrake-baseurl": keybrake_baseurl,
        }
        if args.database:
            targets[PG_PATH] = start_keybrake_pg(procs, pg_home, fake_port, args.database)
        scraper = None
        if args.metrics:
            targets[METRICS_PATH], _, metrics_url = start_keybrake(procs, fake_port, METRICS_PATH, metrics=True)
            scraper = Scraper(metrics_url, args.scrape_interval)
        print(f"fake stripe :{fake_port}, mitmdump {targets['mitmproxy'].proxy}, keybrake {keybrake_forward.proxy} "
              f"(base URL {keybrake_baseurl.base_url}); {args.repeats} repeats x c={args.concurrency_list} x "
              f"{args.requests} requests (+{args.warmup} warm-up)", flush=True)
        try:
            runs = measure_all(targets, args.concurrency_list, args.repeats, args.requests, args.warmup, fake.pid)
        finally:
            scraped = scraper.stop() if scraper is not None else None
        rss = {"mitmdump": rss_mib(targets["mitmproxy"].pid), "keybrake": rss_mib(targets["keybrake"].pid),
               "fake_stripe": rss_mib(fake.pid)}
        for name in (PG_PATH, METRICS_PATH):
            if name in targets:
                rss[name] = rss_mib(targets[name].pid)
        wal = workdir / "keybrake-home" / "keybrake.db-wal"
        keybrake_wal_mib = wal.stat().st_size / 2**20 if wal.exists() else 0.0
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    summary = summarise(runs, args.concurrency_list)
    ratio = ratios(summary)
    return {
        "command": " ".join([os.path.basename(PY), "scripts/bench.py", *redacted_argv(args.database)]),
        "machine": machine, "loadavg_at_end": os.getloadavg(), "wall_s": time.perf_counter() - started,
        "package_sha256_16": package_fingerprint(),
        "config": {"concurrency": args.concurrency_list, "requests": args.requests, "warmup": args.warmup,
                   "repeats": args.repeats, "workload": f"POST {ENDPOINT} {FORM_BODY} + unique Idempotency-Key"},
        "database": "postgresql (see --database)" if args.database else None,
        "summary": summary, "ratios": ratio, "targets": judge(summary, ratio, args.concurrency_list, ledger, batched),
        "user_figures": user_figures(summary, ratio, args.concurrency_list),
        "paired_added_p50_ms": paired_added_p50(runs, args.concurrency_list),
        "ledger_alone": ledger, "ledger_batched": batched, "rss_mib": rss, "keybrake_wal_mib": keybrake_wal_mib, "runs": runs,
        "metrics_cost": metrics_cost(runs, args.concurrency_list) if scraped else None, "metrics_scraper": scraped,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.loadgen:
        return loadgen_main(args.loadgen)
    result = run_benchmark(args)
    print_report(result)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json_path}")
    bad = sum(figures["bad_responses"] for paths in result["summary"].values() for figures in paths.values())
    if bad:
        print(f"\nFAIL: {bad} responses were not 200 (or failed outright); see the runs in the JSON.",
              file=sys.stderr)
        return 2
    if args.strict and not all(check["pass"] for check in result["targets"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
