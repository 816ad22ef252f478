"""Keybrake soak: does a long run through one `keybrake proxy` stay correct and flat in memory,
and does `keybrake audit --label` stay fast once the audit table is large?

Part 1, the load soak (skipped with --requests 0):
  one fake Stripe (keybrake_addon.fakes.fake_stripe.FakeStripe, in this process; its `received`
  record is cleared every second so the driver does not hoard request copies), a temporary
  Keybrake home, one `keybrake proxy` process (ProxyProcess), one no-cap allow-all vault key with
  the label "soak". A load generator in its own process (httpx.AsyncClient, HTTP/1.1 keep-alive,
  16 workers, CONNECT + TLS through the forward proxy) sends N requests (default 100,000) of
  POST /v1/payment_intents amount=100&currency=usd, each with a unique Idempotency-Key. No separate
  warm-up: the first 10,000 requests are the warm-up. The proxy's VmRSS (/proc/PID/status) is read
  the moment the 10,000th response arrives, every 10,000 after that, and when the last one arrives.
  After the proxy stops (gracefully, so it drains its settlements) the ledger is read with sqlite3.

  Fails (exit 1) if any request failed (transport error, non-200, or a 200 without Keybrake's
  x-keybrake-key-id header), if the label's audit rows != N, if any of them is not settled with
  status 200 or a reservation is left open, if the proxy logged an error, or if
  RSS at the end > 1.10 x RSS after 10,000 requests.

Part 2, --audit-scale:
  a second home made with `keybrake init` (the real schema), whose audit table is filled with
  1,000,000 synthetic rows (one executemany, one transaction) spread round-robin over 2,000 labels,
  so one label has ~500 rows scattered through the table. Then: EXPLAIN QUERY PLAN of the exact SQL
  `SqliteLedger.audit_rows(AuditFilter(label=...))` runs (it must use the audit_label_ts index), that
  call's time (median of 5, on an open ledger), and the wall time of the CLI
  `keybrake --home H audit --label L --format json` (median of 3, Python start-up included), next to
  `python -c "import keybrake_addon.cli.main"` and `python -c pass` for comparison.
  Fails (exit 1) if the query's median is not under 200 ms, the plan does not use audit_label_ts,
  or the row counts are wrong.

Run:
    python scripts/soak.py [--requests N] [--concurrency C] [--audit-scale] [--audit-rows N]
                           [--audit-labels N] [--json out.json] [--keep]

Everything listens on 127.0.0.1; every process it starts is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from _fingerprint import package_fingerprint  # scripts/ is sys.path[0] when run as a script

PY = sys.executable
UPSTREAM_SECRET = "sk_test_" + "soak0upstream0secret0only0"  # what the fake Stripe accepts
STRIPE_BASE = "https://api.stripe.com"
ENDPOINT = "/v1/payment_intents"
FORM_BODY = "amount=100&currency=usd"
LABEL = "soak"
SAMPLE_EVERY = 10_000  # RSS is read after this many requests, and every this many after that
RSS_GROWTH_LIMIT = 1.10  # RSS at the end / RSS after the first SAMPLE_EVERY requests
AUDIT_QUERY_LIMIT_MS = 200.0
AUDIT_INDEX = "audit_label_ts"
CLEAR_RECEIVED_EVERY_S = 1.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def vm_kib(pid: int, field: str = "VmRSS") -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match[1]) if match else -1


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a whole process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def mib(kib: int) -> float:
    return round(kib / 1024, 1)


# ----- load generator (its own process: `soak.py --loadgen CONFIG_JSON`) -----------------------

async def _loadgen(cfg: dict) -> dict:
    import ssl

    import httpx

    total, concurrency, pid = cfg["requests"], cfg["concurrency"], cfg["pid"]
    statuses: Counter = Counter()
    errors: Counter = Counter()
    ungated = 0
    done = 0
    latencies: list[float] = []
    samples: list[dict] = []  # {"requests", "seconds", "rss_kib", "proxy_cpu_s"}
    tag = uuid.uuid4().hex[:12]
    next_index = iter(range(total))
    headers = {"authorization": f"Bearer {cfg['token']}", "content-type": "application/x-www-form-urlencoded"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    started, cpu_start = time.perf_counter(), cpu_seconds(pid)

    def sample() -> None:
        samples.append({"requests": done, "seconds": round(time.perf_counter() - started, 3),
                        "rss_kib": vm_kib(pid), "proxy_cpu_s": round(cpu_seconds(pid) - cpu_start, 2)})
        print(f"  {done:>8} requests  {done / (time.perf_counter() - started):7.1f} req/s  "
              f"proxy RSS {mib(samples[-1]['rss_kib']):6.1f} MiB  errors {sum(errors.values())}  "
              f"non-200 {sum(v for k, v in statuses.items() if k != 200)}", file=sys.stderr, flush=True)

    async with httpx.AsyncClient(base_url=STRIPE_BASE, proxy=cfg["proxy"],
                                 verify=ssl.create_default_context(cafile=cfg["cafile"]), limits=limits,
                                 http1=True, http2=False, trust_env=False, timeout=60.0) as client:

        async def worker() -> None:
            nonlocal done, ungated
            for index in next_index:  # shared iterator: each index taken once
                sent = time.perf_counter()
                try:
                    response = await client.post(ENDPOINT, content=FORM_BODY,
                                                 headers={**headers, "idempotency-key": f"soak-{tag}-{index}"})
                    statuses[response.status_code] += 1
                    ungated += response.status_code == 200 and "x-keybrake-key-id" not in response.headers
                    latencies.append(time.perf_counter() - sent)
                except Exception as error:  # noqa: BLE001 - counted and reported, never hidden
                    errors[type(error).__name__] += 1
                done += 1
                if done % SAMPLE_EVERY == 0 or done == total:
                    sample()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    latencies.sort()

    def pct(fraction: float) -> float:
        return latencies[min(len(latencies) - 1, int(fraction * len(latencies)))] * 1000 if latencies else float("nan")

    return {"requests": total, "wall_s": wall, "req_per_s": total / wall, "statuses": dict(statuses),
            "errors": dict(errors), "ungated_200s": ungated, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "samples": samples}


def loadgen_main(config_json: str) -> int:
    print(json.dumps(asyncio.run(_loadgen(json.loads(config_json)))), flush=True)
    return 0


# ----- part 1: the load soak ------------------------------------------------------------------

def run_load_soak(workdir: Path, requests: int, concurrency: int) -> dict:
    from keybrake_addon.fakes.fake_stripe import FakeStripe
    from keybrake_addon.home import KeybrakeHome
    from keybrake_addon.proxy_process import ProxyProcess, keybrake, keybrake_json

    home = workdir / "soak-home"
    keybrake(home, "init")
    keybrake(home, "secret", "set", "stripe", stdin=UPSTREAM_SECRET + "\n")
    issued = keybrake_json(home, "issue", "--vendor", "stripe", "--no-cap", "--allow-all", "--label", LABEL)
    database = KeybrakeHome.resolve(home).database
    stop_clearing = threading.Event()
    proxy = None
    with FakeStripe(secret=UPSTREAM_SECRET) as fake:
        def clear_received() -> None:  # FakeStripe.received grows without bound otherwise
            while not stop_clearing.wait(CLEAR_RECEIVED_EVERY_S):
                fake.clear_received()

        clearer = threading.Thread(target=clear_received, name="clear-received", daemon=True)
        clearer.start()
        try:
            # No access log: a line per request would make the log the soak reads back grow without bound.
            proxy = ProxyProcess(home=home, upstreams=(f"stripe={fake.url}",), log_path=workdir / "proxy.log",
                                 extra_args=("--access-log", "off")).start()
            pid = proxy.process.pid
            rss_start = vm_kib(pid)
            cfg = {"proxy": proxy.url, "cafile": str(home / "certs" / "keybrake-ca.pem"),
                   "token": issued["vault_key"], "concurrency": concurrency, "requests": requests, "pid": pid}
            print(f"soak: {requests} requests at concurrency {concurrency} through {proxy.url} "
                  f"(proxy pid {pid}, RSS at start {mib(rss_start)} MiB)", file=sys.stderr, flush=True)
            result = subprocess.run([PY, os.path.abspath(__file__), "--loadgen", json.dumps(cfg)],
                                    stdout=subprocess.PIPE, text=True, timeout=600 + requests)
            if result.returncode != 0:
                raise RuntimeError(f"the load generator failed with exit code {result.returncode}")
            load = json.loads(result.stdout.strip().splitlines()[-1])
            time.sleep(1.0)  # let the last settlements commit
            rss_after_idle, rss_peak = vm_kib(pid), vm_kib(pid, "VmHWM")
            wal = database.with_name(database.name + "-wal")
            wal_mib = round(wal.stat().st_size / 2**20, 1) if wal.exists() else 0.0
            fake_hits = fake.hits
        finally:
            stop_clearing.set()
            if proxy is not None:
                proxy.stop()  # SIGTERM: the proxy drains its settlements, then exits
    log = proxy.log_text()
    log_errors = [line for line in log.splitlines()
                  if re.search(r"keybrake: (could not|cannot|unexpected|refusing)|Traceback|\bERROR\b", line)]

    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        audit_rows = db.execute("SELECT COUNT(*) FROM audit WHERE label = ?", (LABEL,)).fetchone()[0]
        settled_200 = db.execute("SELECT COUNT(*) FROM audit WHERE label = ? AND status = 200 AND outcome = 'settled'",
                                 (LABEL,)).fetchone()[0]
        open_holds = db.execute("SELECT COUNT(*) FROM reservations WHERE state IN ('pending', 'unknown')").fetchone()[0]

    by_count = {sample["requests"]: sample["rss_kib"] for sample in load["samples"]}
    rss_10k = by_count.get(min(SAMPLE_EVERY, requests))
    rss_end = by_count.get(requests)
    failed = sum(load["errors"].values()) + sum(v for k, v in load["statuses"].items() if k != "200") \
        + load["ungated_200s"]
    figures = {
        "requests": requests, "concurrency": concurrency, "errors": failed,
        "error_detail": {"transport": load["errors"], "statuses": load["statuses"], "ungated_200s": load["ungated_200s"]},
        "wall_s": round(load["wall_s"], 1), "req_per_s": round(load["req_per_s"], 1),
        "p50_ms": round(load["p50_ms"], 2), "p99_ms": round(load["p99_ms"], 2),
        "rss_start_mib": mib(rss_start), "rss_10k_mib": mib(rss_10k), "rss_end_mib": mib(rss_end),
        "rss_growth_pct": round(100 * (rss_end / rss_10k - 1), 2),
        "rss_after_idle_mib": mib(rss_after_idle), "rss_peak_mib": mib(rss_peak),
        "rss_curve_mib": [[s["requests"], mib(s["rss_kib"])] for s in load["samples"]],
        # per interval of SAMPLE_EVERY requests: [requests at its end, req/s, proxy CPU us per request]
        "interval_curve": interval_curve(load["samples"]),
        "audit_rows": audit_rows, "audit_rows_settled_200": settled_200, "open_reservations": open_holds,
        "upstream_hits": fake_hits, "wal_mib_at_end": wal_mib, "proxy_log_error_lines": len(log_errors),
    }
    problems = []
    if failed:
        problems.append(f"{failed} requests failed: {figures['error_detail']}")
    if audit_rows != requests:
        problems.append(f"audit rows for label {LABEL!r}: {audit_rows}, expected {requests}")
    if settled_200 != requests or open_holds:
        problems.append(f"{requests - settled_200} audit rows not settled with status 200; "
                        f"{open_holds} reservations left open")
    if log_errors:
        problems.append(f"the proxy logged {len(log_errors)} error lines, e.g. {log_errors[:3]}")
    if rss_end > RSS_GROWTH_LIMIT * rss_10k:
        problems.append(f"proxy RSS grew from {mib(rss_10k)} MiB after {SAMPLE_EVERY} requests to {mib(rss_end)} MiB "
                        f"at the end (> {RSS_GROWTH_LIMIT:.2f}x)")
    figures["problems"] = problems
    return figures


def interval_curve(samples: list[dict]) -> list[list]:
    curve, previous = [], {"requests": 0, "seconds": 0.0, "proxy_cpu_s": 0.0}
    for sample in samples:
        count = sample["requests"] - previous["requests"]
        seconds = sample["seconds"] - previous["seconds"]
        if count > 0 and seconds > 0:
            curve.append([sample["requests"], round(count / seconds, 1),
                          round((sample["proxy_cpu_s"] - previous["proxy_cpu_s"]) * 1e6 / count)])
        previous = sample
    return curve


# ----- part 2: the audit table at scale -------------------------------------------------------

def fill_audit(database: Path, rows: int, labels: int) -> float:
    """Insert `rows` synthetic audit rows, round-robin over `labels` labels, in one transaction.

    SQLite makes the rows itself (a recursive CTE), and the table's indexes are built after them:
    tuples made in Python, into indexes growing row by row, took ~45 s of the suite's soak."""
    base = 1_767_225_600  # 2026-01-01T00:00:00Z, on a minute: one row per 10 ms after it
    started = time.perf_counter()
    db = sqlite3.connect(database, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        # The schema's own indexes, built once over the filled table: faster than growing them row by row.
        indexes = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit' "
                             "AND sql IS NOT NULL").fetchall()
        for name, _ in indexes:
            db.execute(f'DROP INDEX "{name}"')
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < :rows) "
            "INSERT INTO audit (ts, key_id, label, vendor, method, path, status, decision, outcome, reserved_micros, "
            "actual_micros, amount_minor, currency, object_id, idempotency_key, vendor_request_id, replayed, "
            "duration_ms, reservation_id, message) "
            "SELECT strftime('%Y-%m-%dT%H:%M:', :base + i / 100, 'unixepoch') || printf('%09.6f', (i % 6000) / 100.0)"
            " || 'Z', printf('key_%020x', i % :labels), printf('run-%05d', i % :labels), 'stripe', 'POST', :endpoint,"
            " 200, 'allowed', 'settled', 1000000, 1000000, 100, 'usd', printf('pi_%024d', i), 'idem-' || i,"
            " printf('req_%014d', i), 0, 1.5, i + 1, NULL FROM n",
            {"rows": rows, "base": base, "labels": labels, "endpoint": ENDPOINT})
        for _, sql in indexes:
            db.execute(sql)
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return time.perf_counter() - started


def wall_ms(cmd: list[str], repeats: int) -> tuple[float, list[float], str]:
    """Median wall time of `cmd` over `repeats` runs, after one untimed warm-up run."""
    times, output = [], ""
    for attempt in range(repeats + 1):
        started = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        elapsed = (time.perf_counter() - started) * 1000
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr}")
        output = result.stdout
        if attempt:
            times.append(elapsed)
    return statistics.median(times), [round(t, 1) for t in times], output


def keybrake_command() -> list[str]:
    script = Path(PY).with_name("keybrake")  # the console script, as users run it
    return [str(script)] if script.exists() else [PY, "-m", "keybrake_addon"]


def run_audit_scale(workdir: Path, rows: int, labels: int) -> dict:
    from keybrake_addon.home import KeybrakeHome
    from keybrake_addon.ledger.base import AuditFilter
    from keybrake_addon.ledger.sqlite import SqliteLedger
    from keybrake_addon.proxy_process import keybrake

    home = workdir / "audit-home"
    keybrake(home, "init")  # the real schema, indexes included
    database = KeybrakeHome.resolve(home).database
    print(f"audit scale: inserting {rows} audit rows over {labels} labels ...", file=sys.stderr, flush=True)
    fill_s = fill_audit(database, rows, labels)
    chosen = (labels // 2 + 17) % labels  # a label in the middle, nothing special about it
    label = f"run-{chosen:05d}"
    expected = len(range(chosen, rows, labels))

    ledger = SqliteLedger(database)
    try:
        executed: list[str] = []
        ledger.database._db.set_trace_callback(executed.append)  # capture the exact SQL audit_rows runs
        found = ledger.audit_rows(AuditFilter(label=label))
        ledger.database._db.set_trace_callback(None)
        select = next(sql for sql in executed if sql.lstrip().upper().startswith("SELECT"))
        plan = [row[3] for row in ledger.database._db.execute("EXPLAIN QUERY PLAN " + select)]
        times = []
        for _ in range(5):
            started = time.perf_counter()
            ledger.audit_rows(AuditFilter(label=label))
            times.append((time.perf_counter() - started) * 1000)
    finally:
        ledger.close()
    query_ms = statistics.median(times)

    cli = [*keybrake_command(), "--home", str(home), "audit", "--label", label, "--format", "json"]
    cli_ms, cli_each, output = wall_ms(cli, 3)
    cli_rows = len(json.loads(output))
    import_ms, import_each, _ = wall_ms([PY, "-c", "import keybrake_addon.cli.main"], 3)
    bare_ms, bare_each, _ = wall_ms([PY, "-c", "pass"], 3)
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        total_rows = db.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    figures = {
        "audit_rows_total": total_rows, "labels": labels, "label": label, "label_rows": len(found),
        "fill_s": round(fill_s, 1), "db_mib": round(database.stat().st_size / 2**20, 1),
        "sql": select, "query_plan": plan, "uses_index": any(AUDIT_INDEX in step for step in plan),
        "query_ms_median": round(query_ms, 2), "query_ms_each": [round(t, 2) for t in times],
        "cli": " ".join(["keybrake", *cli[len(keybrake_command()):]]),
        "cli_rows": cli_rows, "cli_wall_ms_median": round(cli_ms, 1), "cli_wall_ms_each": cli_each,
        "import_cli_ms_median": round(import_ms, 1), "import_cli_ms_each": import_each,
        "python_startup_ms_median": round(bare_ms, 1), "python_startup_ms_each": bare_each,
    }
    problems = []
    if total_rows != rows or len(found) != expected or cli_rows != expected:
        problems.append(f"row counts: table {total_rows} (expected {rows}), label {len(found)} and CLI {cli_rows} "
                        f"(expected {expected})")
    if not figures["uses_index"]:
        problems.append(f"the label query does not use {AUDIT_INDEX}: {plan}")
    if query_ms >= AUDIT_QUERY_LIMIT_MS:
        problems.append(f"audit_rows(label=...) took {query_ms:.1f} ms (median), limit {AUDIT_QUERY_LIMIT_MS:.0f} ms")
    figures["problems"] = problems
    return figures


# ----- main ----------------------------------------------------------------------------------

def print_report(result: dict) -> None:
    if soak := result.get("soak"):
        print(f"\nLoad soak: {soak['requests']} x POST {ENDPOINT} at concurrency {soak['concurrency']} "
              f"through the forward proxy (CONNECT + TLS)")
        print(f"  errors {soak['errors']}  wall {soak['wall_s']} s  {soak['req_per_s']} req/s  "
              f"p50 {soak['p50_ms']} ms  p99 {soak['p99_ms']} ms")
        print(f"  proxy RSS: start {soak['rss_start_mib']} MiB, after {min(SAMPLE_EVERY, soak['requests'])} "
              f"requests {soak['rss_10k_mib']} MiB, "
              f"at the end {soak['rss_end_mib']} MiB (growth {soak['rss_growth_pct']:+.2f}%; limit "
              f"{100 * (RSS_GROWTH_LIMIT - 1):.0f}%), 1 s later {soak['rss_after_idle_mib']} MiB, "
              f"peak {soak['rss_peak_mib']} MiB")
        print("  RSS curve (requests, MiB): " + ", ".join(f"{n // 1000}k {m}" for n, m in soak["rss_curve_mib"]))
        print("  per interval (requests, req/s, proxy CPU us/req): "
              + ", ".join(f"{n // 1000}k {r:.0f} {c}" for n, r, c in soak["interval_curve"]))
        print(f"  audit rows for label {LABEL!r}: {soak['audit_rows']} (settled with 200: "
              f"{soak['audit_rows_settled_200']}); open reservations {soak['open_reservations']}; "
              f"upstream hits {soak['upstream_hits']}; WAL at the end {soak['wal_mib_at_end']} MiB; "
              f"proxy log error lines {soak['proxy_log_error_lines']}")
    if scale := result.get("audit_scale"):
        print(f"\nAudit at scale: {scale['audit_rows_total']} rows over {scale['labels']} labels "
              f"(filled in {scale['fill_s']} s; database {scale['db_mib']} MiB)")
        print(f"  SQL: {scale['sql']}")
        print("  EXPLAIN QUERY PLAN: " + " | ".join(scale["query_plan"]))
        print(f"  SqliteLedger.audit_rows(label={scale['label']!r}): {scale['label_rows']} rows, "
              f"median {scale['query_ms_median']} ms {scale['query_ms_each']} (limit {AUDIT_QUERY_LIMIT_MS:.0f} ms)")
        print(f"  `{scale['cli']}`: {scale['cli_rows']} rows, wall median {scale['cli_wall_ms_median']} ms "
              f"{scale['cli_wall_ms_each']}")
        print(f"  for comparison: `python -c 'import keybrake_addon.cli.main'` {scale['import_cli_ms_median']} ms, "
              f"`python -c pass` {scale['python_startup_ms_median']} ms")
    problems = result["problems"]
    print("\n" + ("PASS" if not problems else "FAIL:\n  " + "\n  ".join(problems)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000, help="requests in the load soak (0: skip it)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--audit-scale", action="store_true", help="also time the audit query on a large table")
    parser.add_argument("--audit-rows", type=int, default=1_000_000)
    parser.add_argument("--audit-labels", type=int, default=2_000)
    parser.add_argument("--json", dest="json_path", help="write every figure as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary homes (their path is printed)")
    parser.add_argument("--loadgen", help=argparse.SUPPRESS)  # internal: run as the load generator
    args = parser.parse_args(argv)
    if args.requests < 0 or args.concurrency < 1 or args.audit_rows < 1 or args.audit_labels < 1:
        parser.error("--requests must be >= 0; --concurrency, --audit-rows and --audit-labels >= 1")
    if not args.loadgen and args.requests == 0 and not args.audit_scale:
        parser.error("nothing to do: --requests 0 without --audit-scale")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.loadgen:
        return loadgen_main(args.loadgen)
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="keybrake-soak-"))
    result: dict = {"command": " ".join([os.path.basename(PY), "scripts/soak.py", *sys.argv[1:]]),
                    "package_sha256_16": package_fingerprint(), "loadavg_at_start": os.getloadavg(),
                    "nproc": os.cpu_count()}
    try:
        if args.requests:
            result["soak"] = run_load_soak(workdir, args.requests, args.concurrency)
        if args.audit_scale:
            result["audit_scale"] = run_audit_scale(workdir, args.audit_rows, args.audit_labels)
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    result["problems"] = [p for part in ("soak", "audit_scale") for p in result.get(part, {}).get("problems", [])]
    result["wall_s"] = round(time.perf_counter() - started, 1)
    result["loadavg_at_end"] = os.getloadavg()
    print_report(result)
    print(f"soak.py wall time {result['wall_s']} s; load average at start "
          f"{' '.join(f'{x:.2f}' for x in result['loadavg_at_start'])}, at end "
          f"{' '.join(f'{x:.2f}' for x in result['loadavg_at_end'])}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
