"""A small load driver for the scenario tests: run N stripe-SDK calls over a thread pool.

Each call gets its client-side start time (monotonic and wall clock, read just before the SDK
call), its elapsed time and a classified outcome, so a scenario can assert about what happened
to calls that started before or after some event (a revoke, an expiry) without timing luck.

Workers are split into `lanes`: call i always runs on a thread of lane i % lanes, so a lane can
be bound to one proxy (one StripeClient with `proxy=...` per lane) while the calls are spread
round-robin. `pace_s` makes call i start no earlier than i * pace_s after the batch starts, so
calls keep starting throughout a batch instead of all queueing up at t=0.

Only loopback, bounded loops and the SDK's own (generous) timeouts: nothing here asserts speed.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import stripe

from e2e.helpers import keybrake

OK, CAP_HIT, REVOKED, EXPIRED = "ok", "cap_hit", "revoked", "expired"
MICROS_PER_USD = 1_000_000
MICROS_PER_CENT = 10_000


def payment_intent(amount_cents: int) -> dict:
    return {"amount": amount_cents, "currency": "usd", "confirm": True, "payment_method": "pm_card_visa"}


@dataclass
class Call:
    index: int
    lane: int
    started: float = 0.0  # time.monotonic() just before the SDK call
    started_wall: float = 0.0  # time.time() just before the SDK call
    finished: float = 0.0  # time.monotonic() when the SDK call returned or raised
    finished_wall: float = 0.0
    outcome: str = ""
    detail: str = ""  # the refusal code or exception text, for "other" outcomes and messages
    result: Any = None  # the StripeObject or the exception

    @property
    def elapsed(self) -> float:
        return self.finished - self.started


@dataclass
class Batch:
    calls: list[Call]
    started: float
    finished: float
    counts: Counter = field(default_factory=Counter)

    @property
    def wall_s(self) -> float:
        return self.finished - self.started

    @property
    def req_per_s(self) -> float:
        return len(self.calls) / self.wall_s if self.wall_s > 0 else 0.0

    def having(self, outcome: str) -> list[Call]:
        return [c for c in self.calls if c.outcome == outcome]

    def others(self) -> list[Call]:
        return [c for c in self.calls if c.outcome not in (OK, CAP_HIT, REVOKED, EXPIRED)]


def classify(result: Any) -> tuple[str, str]:
    """(outcome, detail) for what one SDK call returned or raised."""
    if not isinstance(result, BaseException):
        return OK, getattr(result, "id", "") or ""
    if isinstance(result, stripe.StripeError):
        body = result.json_body if isinstance(result.json_body, dict) else {}
        code = (body.get("error") or {}).get("code") or ""
        headers = result.headers or {}
        if isinstance(result, stripe.RateLimitError) and headers.get("x-keybrake-cap-hit") == "true":
            return CAP_HIT, code
        if isinstance(result, stripe.AuthenticationError) and code == "keybrake_key_revoked":
            return REVOKED, code
        if isinstance(result, stripe.AuthenticationError) and code == "keybrake_key_expired":
            return EXPIRED, code
        return f"other:{type(result).__name__}:{result.http_status}:{code}", str(result)[:300]
    return f"other:{type(result).__name__}", str(result)[:300]


def run_batch(n: int, call: Callable[[int], Any], *, workers: int = 50, lanes: int = 1, pace_s: float = 0.0,
              on_done: Callable[[Call], None] | None = None, stop: threading.Event | None = None) -> Batch:
    """Run call(0) ... call(n-1) over `workers` threads split into `lanes`; never raises for a call.
    Once `stop` is set, the calls not started yet are not made, and the batch holds only those made."""
    assert workers % lanes == 0, "workers must split evenly over the lanes"
    calls = [Call(i, i % lanes) for i in range(n)]
    stop = stop or threading.Event()
    t0 = time.monotonic()

    def one(record: Call) -> None:
        if pace_s > 0:
            delay = t0 + record.index * pace_s - time.monotonic()
            if delay > 0:
                stop.wait(delay)
        if stop.is_set():
            return
        record.started_wall = time.time()
        record.started = time.monotonic()
        try:
            result = call(record.index)
        except Exception as error:  # noqa: BLE001 - every failure is classified, none escapes
            result = error
        record.finished = time.monotonic()
        record.finished_wall = time.time()
        record.result = result
        record.outcome, record.detail = classify(result)
        if on_done is not None:
            on_done(record)

    pools = [ThreadPoolExecutor(max_workers=workers // lanes, thread_name_prefix=f"load-lane{lane}")
             for lane in range(lanes)]
    try:
        futures = [pools[record.lane].submit(one, record) for record in calls]
        for future in futures:
            future.result(timeout=300)  # far beyond any SDK timeout: a hang fails, it never blocks forever
    finally:
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)
    made = [c for c in calls if c.outcome]
    batch = Batch(made, t0, time.monotonic())
    batch.counts = Counter(c.outcome for c in made)
    return batch


class Completion:
    """Counts finished calls so the main thread can wait for "40% done" (pass `.done` as on_done)."""

    def __init__(self) -> None:
        self._count = 0
        self._cond = threading.Condition()

    def done(self, _call: Call) -> None:
        with self._cond:
            self._count += 1
            self._cond.notify_all()

    @property
    def count(self) -> int:
        with self._cond:
            return self._count

    def wait_for(self, count: int, timeout_s: float) -> int:
        with self._cond:
            self._cond.wait_for(lambda: self._count >= count, timeout=timeout_s)
            return self._count


class Background:
    """Runs run_batch on a thread, so the main thread can act while the batch is under way."""

    def __init__(self, *args, **kwargs) -> None:
        self.batch: Batch | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=args, kwargs=kwargs, daemon=True, name="batch")

    def _run(self, *args, **kwargs) -> None:
        try:
            self.batch = run_batch(*args, **kwargs)
        except BaseException as error:  # noqa: BLE001 - re-raised in join()
            self.error = error

    def start(self) -> "Background":
        self._thread.start()
        return self

    def join(self, timeout_s: float = 300) -> Batch:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the batch did not finish"
        if self.error is not None:
            raise self.error
        assert self.batch is not None
        return self.batch


# ----- the ledger, read directly ------------------------------------------------------------


def ledger_row(home: Path, key_id: str) -> sqlite3.Row:
    """The key's counters, read on a connection of our own (WAL: readers never block the proxy)."""
    with sqlite3.connect(home / "keybrake.db", timeout=30) as db:
        db.row_factory = sqlite3.Row
        return db.execute("SELECT * FROM vault_keys WHERE key_id = ?", (key_id,)).fetchone()


def settled_ledger_row(home: Path, key_id: str, timeout_s: float = 20.0) -> sqlite3.Row:
    """The key's row once no reservation of it is pending.

    The proxy settles a call right after writing its reply, so the last few settlements may
    commit just after the client saw the last answer: poll (bounded) until none is pending.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        with sqlite3.connect(home / "keybrake.db", timeout=30) as db:
            db.row_factory = sqlite3.Row
            pending = db.execute("SELECT COUNT(*) FROM reservations WHERE key_id = ? AND state = 'pending'",
                                 (key_id,)).fetchone()[0]
            row = db.execute("SELECT * FROM vault_keys WHERE key_id = ?", (key_id,)).fetchone()
        if pending == 0 or time.monotonic() > deadline:
            return row
        time.sleep(0.05)


def assert_clean_log(*proxies) -> None:
    """No proxy logged an unexpected hook error or an unsettled reservation."""
    for proxy in proxies:
        bad = [line for line in proxy.log_text().splitlines()
               if "unexpected" in line or "could not settle" in line or "Traceback" in line]
        assert not bad, f"{proxy.log_path.name}: " + " | ".join(bad[:5])


def count_rows(home: Path, sql: str, *params) -> int:
    with sqlite3.connect(home / "keybrake.db", timeout=30) as db:
        return db.execute(sql, params).fetchone()[0]


def usd(micros: int) -> str:
    return f"{micros / MICROS_PER_USD:.2f}"


def prepare_ca_bundle(home: Path, monkeypatch) -> None:
    """`keybrake env` writes the CA bundle (public roots + Keybrake CA); stripe-python is pointed at it."""
    keybrake(home, "env")
    monkeypatch.setattr(stripe, "ca_bundle_path", str(home / "certs" / "keybrake-ca-bundle.pem"))
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def client_via_env(proxy_url: str, vault_key: str, monkeypatch) -> stripe.StripeClient:
    """One StripeClient shared by every worker thread (the SDK keeps a requests session per thread),
    going through the proxy the way a worker is told to: HTTPS_PROXY in the environment."""
    monkeypatch.setenv("HTTPS_PROXY", proxy_url)
    return stripe.StripeClient(vault_key, max_network_retries=0)


def client_via_param(proxy_url: str, vault_key: str) -> stripe.StripeClient:
    """A StripeClient bound to one proxy (HTTPS_PROXY is process-global; `proxy=` is per client)."""
    return stripe.StripeClient(vault_key, max_network_retries=0, proxy=proxy_url)


def run_parallel(n: int, call, workers: int) -> list:
    """call(0..n-1) over a thread pool; each result is the return value or the exception raised."""

    def one(i: int):
        try:
            return call(i)
        except Exception as error:  # noqa: BLE001 - the test inspects every outcome
            return error

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scenario") as pool:
        futures = [pool.submit(one, i) for i in range(n)]
        return [f.result(timeout=300) for f in futures]  # bounded: a hang fails the test


@contextmanager
def ledger(home: Path) -> Iterator[sqlite3.Connection]:
    """A connection of our own to the ledger (WAL: a reader never blocks the proxy), closed after use."""
    db = sqlite3.connect(home / "keybrake.db", timeout=30, isolation_level=None)
    db.row_factory = sqlite3.Row
    try:
        yield db
    finally:
        db.close()
