"""How fast do the dashboard's pages answer on a big ledger?

Builds a SQLite ledger of 10,000 vault keys and 1,000,000 audit rows (about 930,000 reservations)
spread over the last 30 days, then times each dashboard page served through the real Starlette
routes (sign-in cookie, ledger reads, Jinja2 rendering) with an in-process HTTP client, and each
page's ledger reads alone. Reports the median of R runs per page; the target is 300 ms a page.

The data, built in bulk through the ledger's own database API (the ledger's schema and indexes,
one transaction per 50,000 rows; about a minute):
- runs labelled `trigger.dev/<task>/run_<n>` (80 %), `cron/<job>/<day>` (15 %) and unlabelled keys;
  one or two keys per run (Stripe 60 %, Twilio 25 %, Resend 15 %), most with a total cap, some
  with a daily cap, each living a day; 10 % revoked;
- 100 calls per key over its life: 93 % allowed (settled, released, a few unknown or pending of
  a stopped proxy run), 7 % refused (cap hits, endpoints not allowed, expired and unknown keys);
- the keys' counters agree with their reservations, as the ledger keeps them.

Run:
    python scripts/bench_dashboard.py [--keys 10000] [--audit 1000000] [--repeats 9]
                                      [--keep PATH] [--reuse PATH] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from keybrake_addon.api.tokens import AdminTokens  # noqa: E402
from keybrake_addon.ledger.dashboard_reads import AuditQuery, DashboardReads, ReadScope  # noqa: E402
from keybrake_addon.ledger.sqlite import SqliteLedger  # noqa: E402
from keybrake_addon.ledger.times import to_text, utc_day, utc_now  # noqa: E402

TARGET_MS = 300.0
USD = 1_000_000
VENDORS = (("stripe", 0.60), ("twilio", 0.25), ("resend", 0.15))
TASKS = [f"task-{n:02d}" for n in range(30)] + ["billing-agent", "charge-customer", "send-receipts"]
REFUSALS = (("keybrake_cap_exceeded", 429, 0.35), ("keybrake_endpoint_not_allowed", 403, 0.30),
            ("keybrake_key_expired", 401, 0.20), ("keybrake_max_calls_exceeded", 429, 0.15))
ENDPOINTS = {"stripe": ("POST", "/v1/payment_intents"), "twilio": ("POST", "/2010-04-01/Accounts/AC1/Messages.json"),
             "resend": ("POST", "/emails")}
CHUNK = 50_000


def _pick(rng: random.Random, weighted) -> tuple:
    roll, total = rng.random(), 0.0
    for item in weighted:
        total += item[-1]
        if roll < total:
            return item
    return weighted[-1]


def _price(rng: random.Random, vendor: str) -> int:
    if vendor == "stripe":
        return rng.randrange(50, 5000) * 10_000  # $0.50 .. $50.00
    if vendor == "twilio":
        return rng.choice((7_900, 15_800, 23_700))
    return 900


def build(path: Path, n_keys: int, n_audit: int, seed: int = 7) -> dict:
    """A ledger at `path` with the data above; returns what the timings need (ids and labels)."""
    rng = random.Random(seed)
    now = utc_now()
    today = utc_day(now)
    ledger = SqliteLedger(path)
    ledger.register_run("run-dead", 1, "bench-host")
    ledger.stop_run("run-dead")
    per_key = max(1, n_audit // n_keys)
    keys, audit, reservations = [], [], []
    labels: list[str] = []
    run_keys_left = 0
    label = None
    for index in range(n_keys):
        if run_keys_left == 0:
            roll = rng.random()
            if roll < 0.80:
                label = f"trigger.dev/{rng.choice(TASKS)}/run_{index:06d}"
            elif roll < 0.95:
                label = f"cron/job-{rng.randrange(12)}/{index:06d}"
            else:
                label = None
            run_keys_left = rng.choice((1, 1, 2))
            if label:
                labels.append(label)
        run_keys_left -= 1
        vendor = _pick(rng, VENDORS)[0]
        created = now - timedelta(seconds=rng.uniform(0, 30 * 86400))
        expires = created + timedelta(days=1)
        revoked = created + timedelta(seconds=rng.uniform(3600, 86400)) if rng.random() < 0.10 else None
        if revoked is not None and revoked > now:
            revoked = None
        total_cap = rng.randrange(50, 500) * USD if rng.random() < 0.8 else None
        daily_cap = rng.randrange(20, 200) * USD if rng.random() < 0.3 else None
        key_id = f"kbk_{index:08d}"
        end = min(now, revoked or expires, expires)
        spent = reserved = calls = day_spent = day_reserved = 0
        day = None
        method, call_path = ENDPOINTS[vendor]
        for _ in range(per_key):
            at = created + (end - created) * rng.random()
            ts = to_text(at)
            if rng.random() < 0.93:
                price = _price(rng, vendor)
                roll = rng.random()
                state = "settled" if roll < 0.95 else "released" if roll < 0.99 else "unknown" if roll < 0.995 \
                    else "pending"
                actual = price * rng.randrange(80, 101) // 100 if state == "settled" else None
                settled_at = to_text(at + timedelta(milliseconds=rng.uniform(100, 900))) \
                    if state in ("settled", "released") else None
                reservation = len(reservations)
                reservations.append([None, key_id, None, f"{method} {call_path}",
                                     "run-dead" if state == "pending" else None, utc_day(at), price, actual,
                                     state, f"pi_{index}_{reservation}" if state == "settled" else None, ts,
                                     settled_at, 1 if state == "pending" else 0])
                audit.append([None, ts, key_id, label, vendor, method, call_path,
                              200 if state == "settled" else 402 if state == "released" else None, "allowed",
                              "settled" if state == "settled" else state if state != "pending" else None,
                              price, actual, reservation, None, 800 + rng.random() * 400])
                calls += 1
                if state == "settled":
                    spent += actual
                elif state in ("unknown", "pending"):
                    reserved += price
                if utc_day(at) == today:
                    day = today
                    day_spent += actual or 0
                    day_reserved += price if state in ("unknown", "pending") else 0
            else:
                decision, status, _ = _pick(rng, REFUSALS)
                audit.append([None, ts, key_id, label, vendor, method, call_path, status, decision, None,
                              0, None, None, "refused by the bench", 0.2])
        if day is None and rng.random() < 0.5:
            day = utc_day(end)
        keys.append((key_id, f"hash{index:060d}", vendor, "default", label, daily_cap, total_cap, None,
                     json.dumps([f"{method} {call_path}"]), 0, 0, to_text(created), to_text(expires),
                     to_text(revoked), spent, reserved, calls, day, day_spent, day_reserved))
    # Ids in time order, as the ledger hands them out. (The audit rows' reservation_id stays empty:
    # no page reads it.)
    reservations.sort(key=lambda r: r[10])
    for new_id, row in enumerate(reservations, start=1):
        row[0] = new_id
    audit.sort(key=lambda r: r[1])
    with ledger.database.transaction() as tx:
        tx.run_many("INSERT INTO vault_keys (key_id, key_hash, vendor, secret_name, label, daily_cap_micros, "
                    "total_cap_micros, max_calls, allowlist, allow_all, allow_unpriced, created_at, expires_at, "
                    "revoked_at, spent_micros, reserved_micros, calls, day, day_spent_micros, day_reserved_micros) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", keys)
    for start in range(0, len(reservations), CHUNK):
        with ledger.database.transaction() as tx:
            tx.run_many("INSERT INTO reservations (id, key_id, idempotency_key, endpoint, run_id, day, "
                        "reserved_micros, actual_micros, state, object_id, created_at, settled_at, attempts_open) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", reservations[start:start + CHUNK])
    for start in range(0, len(audit), CHUNK):
        with ledger.database.transaction() as tx:
            tx.run_many("INSERT INTO audit (id, ts, key_id, label, vendor, method, path, status, decision, outcome, "
                        "reserved_micros, actual_micros, reservation_id, message, duration_ms) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                        [(start + i + 1, *row[1:12], *row[13:]) for i, row in enumerate(audit[start:start + CHUNK])])
    with ledger.database.transaction() as tx:
        tx.run("ANALYZE")
    _, token = AdminTokens(ledger).create("bench")
    busiest = max(keys, key=lambda k: k[16])[0]
    ledger.close()
    return {"token": token, "label": labels[len(labels) // 2], "key_id": busiest,
            "keys": len(keys), "audit": len(audit), "reservations": len(reservations)}


def median_ms(action, repeats: int) -> dict[str, float]:
    """Median wall time and median CPU time of this process (every thread: the routes read the
    ledger on a worker thread). CPU time says what the page costs when other work shares the cores."""
    action()  # warm: the first read pulls pages into the cache
    wall, cpu = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        action()
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - started_cpu) * 1000)
    return {"wall_ms": statistics.median(wall), "cpu_ms": statistics.median(cpu)}


def time_reads(path: Path, facts: dict, repeats: int) -> dict[str, float]:
    ledger = SqliteLedger(path)
    reads, scope = DashboardReads(ledger), ReadScope.everything()
    label, key_id = facts["label"], facts["key_id"]
    prefix = label.rsplit("/", 1)[0] + "/"
    try:
        return {
            "overview": median_ms(lambda: reads.overview(scope), repeats),
            "spend over 7 days": median_ms(lambda: reads.spend_series(scope), repeats),
            "runs, the top": median_ms(lambda: reads.run_nodes(scope), repeats),
            "runs under trigger.dev/": median_ms(lambda: reads.run_nodes(scope, "trigger.dev/"), repeats),
            f"runs under {prefix}": median_ms(lambda: reads.run_nodes(scope, prefix), repeats),
            "a run's keys": median_ms(lambda: reads.run_keys(scope, label), repeats),
            "a run's chart": median_ms(lambda: reads.run_spend_series(scope, label), repeats),
            "a run's calls": median_ms(lambda: reads.recent_calls(scope, label=label), repeats),
            "a key's chart": median_ms(lambda: reads.key_spend_series(key_id), repeats),
            "a key's calls": median_ms(lambda: reads.recent_calls(scope, key_id=key_id), repeats),
            "audit, newest": median_ms(lambda: reads.audit_page(scope, AuditQuery()), repeats),
            "audit, resend only": median_ms(lambda: reads.audit_page(scope, AuditQuery(vendor="resend")), repeats),
            "audit, cap hits": median_ms(lambda: reads.audit_page(scope, AuditQuery(decision="cap_hit")), repeats),
            "audit, one label": median_ms(lambda: reads.audit_page(scope, AuditQuery(label=label)), repeats),
        }
    finally:
        ledger.close()


def time_pages(path: Path, facts: dict, repeats: int) -> dict[str, float]:
    """Each page as a browser gets it: through the routes, signed in, rendered."""
    import re
    import warnings
    from urllib.parse import quote

    from starlette.applications import Starlette

    from keybrake_addon.listener.dashboard import dashboard_routes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    ledger = SqliteLedger(path)
    label, key_id = facts["label"], facts["key_id"]
    prefix = label.rsplit("/", 1)[0] + "/"
    try:
        with TestClient(Starlette(routes=dashboard_routes(ledger)), follow_redirects=False) as browser:
            csrf = re.search(r'name="csrf" value="([^"]+)"', browser.get("/ui/login").text)[1]
            assert browser.post("/ui/login", data={"csrf": csrf, "token": facts["token"]}).status_code == 303

            def get(url: str):
                def fetch():
                    answer = browser.get(url)
                    assert answer.status_code == 200, (url, answer.status_code)
                return fetch

            pages = {
                "/ui/ (overview)": "/ui/",
                "/ui/ live part": "/ui/?fragment=live",
                "/ui/runs": "/ui/runs",
                "/ui/runs?prefix=trigger.dev/": "/ui/runs?prefix=trigger.dev/",
                f"/ui/runs?prefix={prefix}": f"/ui/runs?prefix={quote(prefix)}",
                "/ui/run (a run)": f"/ui/run?label={quote(label)}",
                "/ui/keys/<busiest key>": f"/ui/keys/{key_id}",
                "/ui/audit": "/ui/audit",
                "/ui/audit?vendor=resend": "/ui/audit?vendor=resend",
                "/ui/audit?decision=cap_hit": "/ui/audit?decision=cap_hit",
                "/ui/audit?label=<a run>": f"/ui/audit?label={quote(label)}",
                "/ui/audit, one day ago": "/ui/audit?until=" + quote((utc_now() - timedelta(days=1)).strftime(
                    "%Y-%m-%dT%H:%M:%S")),
            }
            return {name: median_ms(get(url), repeats) for name, url in pages.items()}
    finally:
        ledger.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--audit", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--keep", type=Path, help="build the ledger at this path and keep it")
    parser.add_argument("--reuse", type=Path, help="time a ledger an earlier --keep built (its facts beside it)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        if options.reuse:
            path = options.reuse
            facts = json.loads(path.with_suffix(".facts.json").read_text())
        else:
            path = options.keep or Path(scratch) / "bench.db"
            path.parent.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            facts = build(path, options.keys, options.audit)
            print(f"built {facts['keys']:,} keys, {facts['audit']:,} audit rows, {facts['reservations']:,} "
                  f"reservations in {time.perf_counter() - started:.0f} s", flush=True)
            if options.keep:
                path.with_suffix(".facts.json").write_text(json.dumps(facts))
        figures = {"pages": time_pages(path, facts, options.repeats),
                   "ledger reads alone": time_reads(path, facts, options.repeats)}
    width = max(len(name) for group in figures.values() for name in group)
    failed = False
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; medians of {options.repeats} runs; "
          f"target {TARGET_MS:.0f} ms a page (wall)")
    for group, results in figures.items():
        print(f"\n{group.ljust(width + 2)}  wall ms    cpu ms")
        for name, ms in results.items():
            verdict = "PASS" if ms["wall_ms"] < TARGET_MS else "MISS"
            failed |= ms["wall_ms"] >= TARGET_MS
            print(f"  {name.ljust(width)}  {ms['wall_ms']:8.1f}  {ms['cpu_ms']:8.1f}  {verdict}")
    if options.json:
        options.json.write_text(json.dumps(figures, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
