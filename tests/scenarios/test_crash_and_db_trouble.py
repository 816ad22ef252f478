"""The proxy dies mid-batch, or its database gets into trouble: the cap's books stay exact.

kill -9: calls in flight lose their answers. Their holds survive in the ledger (state 'pending':
the process died before settling), stay counted, and a retry with the same Idempotency-Key after
a restart settles each exactly once (a replay if the vendor had charged, a charge if not).

Database trouble (locked past the busy timeout, disk full, read-only): the proxy forwards nothing,
answers a Stripe-shaped 503 (`keybrake_unavailable`, Retry-After), keeps running and recovers by
itself once the trouble ends.
"""

import errno
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import stripe

from support.settling import until_settled
from e2e.helpers import REAL_SECRET, keybrake, keybrake_json
from keybrake_addon.fakes.fake_stripe import FakeStripe
from keybrake_addon.proxy_process import ProxyProcess

from .load import ledger, run_parallel

AMOUNT_CENTS = 5000  # $50
MICROS_PER_CENT = 10_000  # 1 USD = 1_000_000 micros
PI = {"amount": AMOUNT_CENTS, "currency": "usd", "confirm": True, "payment_method": "pm_card_visa"}


# ----- helpers ----------------------------------------------------------------------------------




def open_count(home: Path, key_id: str) -> int:
    with ledger(home) as db:
        return db.execute("SELECT COUNT(*) FROM reservations WHERE key_id = ? AND state IN ('pending', 'unknown')",
                          (key_id,)).fetchone()[0]


def wait_until_settled(home: Path, key_id: str) -> int:
    return until_settled(lambda: open_count(home, key_id))


def key_counters(home: Path, key_id: str) -> sqlite3.Row:
    with ledger(home) as db:
        return db.execute("SELECT spent_micros, reserved_micros, calls FROM vault_keys WHERE key_id = ?",
                          (key_id,)).fetchone()


def integrity(home: Path) -> str:
    with ledger(home) as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


def use_proxy(monkeypatch, home: Path, proxy: ProxyProcess) -> None:
    """HTTPS_PROXY + the CA bundle from `keybrake env`, as a worker would (see tests/e2e/conftest.py)."""
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    keybrake(home, "env")
    monkeypatch.setattr(stripe, "ca_bundle_path", str(home / "certs" / "keybrake-ca-bundle.pem"))


def quiet_disconnects(fake: FakeStripe) -> None:
    """The fake's handler threads still sleeping when the proxy is killed write to dead sockets;
    socketserver prints a traceback for each. Those are expected here: drop only those."""
    server = fake._server
    report = server.handle_error

    def handle_error(request, client_address):
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            report(request, client_address)

    server.handle_error = handle_error


def issue_key(home: Path, cap_usd: str = "100000") -> dict:
    return keybrake_json(home, "issue", "--vendor", "stripe", "--total-usd-cap", cap_usd,
                         "--allow", "POST /v1/payment_intents")


# ----- 3. kill -9 mid-batch -------------------------------------------------------------------

CRASH_CALLS = 400
# ~200 calls in flight needs ~200 threads: with the usual 50 workers at most 50 calls can be in
# flight. 250 workers, and a fake that holds each answer for LATENCY_S after charging, so
# admitted calls pile up as 'pending' holds in the ledger.
CRASH_WORKERS = 250
LATENCY_S = 2.0
KILL_AT_PENDING = 200


def test_kill_9_mid_batch_then_retries_settle_each_hold_once(home, tmp_path, monkeypatch, figures):
    t0 = time.monotonic()
    key = issue_key(home)
    key_id = key["key_id"]
    with FakeStripe(secret=REAL_SECRET, latency_s=LATENCY_S) as fake:
        quiet_disconnects(fake)
        proxy = ProxyProcess(home=home, upstreams=(f"stripe={fake.url}",), log_path=tmp_path / "proxy1.log").start()
        try:
            use_proxy(monkeypatch, home, proxy)
            client = stripe.StripeClient(key["vault_key"], max_network_retries=0)
            results: list = []
            completed = [0]  # calls that returned or raised (a list: the workers add to it)

            def one(i: int):
                try:
                    return client.v1.payment_intents.create(params=PI, options={"idempotency_key": f"call-{i}"})
                finally:
                    completed[0] += 1  # only read as a rough trigger: a lost update is harmless

            def batch() -> None:
                results.extend(run_parallel(CRASH_CALLS, one, CRASH_WORKERS))

            runner = threading.Thread(target=batch, name="crash-batch", daemon=True)
            runner.start()
            # Poll the ledger (a reader of our own: WAL readers never block the proxy) for holds
            # admitted and not yet settled. Bounded: on a slow machine the kill comes anyway once a
            # quarter of the batch is done or at the deadline, so there is always something in flight.
            deadline, peak = time.monotonic() + 25, 0
            with ledger(home) as watch:
                while time.monotonic() < deadline and runner.is_alive():
                    peak = max(peak, watch.execute(
                        "SELECT COUNT(*) FROM reservations WHERE key_id = ? AND state = 'pending'",
                        (key_id,)).fetchone()[0])
                    if peak >= KILL_AT_PENDING or completed[0] >= CRASH_CALLS // 4:
                        break
                    time.sleep(0.05)
            proxy.process.kill()  # SIGKILL: no shutdown hook, no drain, no checkpoint
            proxy.process.wait(timeout=10)
            killed_at = time.monotonic()
            runner.join(timeout=120)
            assert not runner.is_alive(), "the batch did not finish after the kill"
        finally:
            proxy.stop()  # the process is gone; this closes its log
        charged_before_restart = {r.headers.get("idempotency-key") for r in fake.received}
        moved_before_restart = fake.money_moved_minor

        # --- right after the kill -------------------------------------------------------------
        assert integrity(home) == "ok"
        answered = {i: r for i, r in enumerate(results) if not isinstance(r, BaseException)}
        failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
        failed_set = set(failed)
        assert len(answered) + len(failed) == CRASH_CALLS
        assert all(isinstance(results[i], stripe.APIConnectionError) for i in failed), \
            {type(results[i]).__name__ for i in failed}
        assert failed, "the kill came after the batch ended: nothing was in flight"
        with ledger(home) as db:
            rows = {r["idempotency_key"]: r for r in db.execute(
                "SELECT * FROM reservations WHERE key_id = ?", (key_id,))}
            pending_at_kill = [r for r in rows.values() if r["state"] == "pending"]
            assert not [r for r in rows.values() if r["state"] not in ("pending", "settled")]
        # No committed spend lost: every call whose worker got its 200 is in the ledger, either
        # settled with its PaymentIntent or (answer written, settlement not yet committed when the
        # process died) still held at its full price: counted either way, never lost.
        settlement_lost = []
        for i, pi in answered.items():
            row = rows.get(f"call-{i}")
            assert row is not None, f"call-{i} got a 200 but has no reservation"
            if row["state"] == "settled":
                assert (row["object_id"], row["actual_micros"]) == (pi.id, AMOUNT_CENTS * MICROS_PER_CENT)
            else:
                assert (row["state"], row["reserved_micros"]) == ("pending", AMOUNT_CENTS * MICROS_PER_CENT)
                settlement_lost.append(row)
        counters = key_counters(home, key_id)
        settled_micros = sum(r["actual_micros"] for r in rows.values() if r["state"] == "settled")
        held_micros = sum(r["reserved_micros"] for r in pending_at_kill)
        assert counters["spent_micros"] == settled_micros  # the key's counters agree with its reservations
        assert counters["reserved_micros"] == held_micros
        assert counters["spent_micros"] >= (len(answered) - len(settlement_lost)) * AMOUNT_CENTS * MICROS_PER_CENT
        assert counters["spent_micros"] + counters["reserved_micros"] >= len(answered) * AMOUNT_CENTS * MICROS_PER_CENT
        # Everything the vendor charged is counted: settled, or still held.
        assert counters["spent_micros"] + counters["reserved_micros"] >= moved_before_restart * MICROS_PER_CENT
        # Holds of calls whose outcome the worker never learned: counted in reserved, listed as open.
        unknown_outcome = [r for r in pending_at_kill if int(r["idempotency_key"].removeprefix("call-")) in failed_set]
        assert len(unknown_outcome) + len(settlement_lost) == len(pending_at_kill)
        shown = keybrake_json(home, "keys", "show", key_id)
        assert {r["id"] for r in shown["open_reservations"]} == {r["id"] for r in pending_at_kill}
        # The proxy that made them is dead (a zombie child of this test): their outcome is unknown.
        assert {r["state"] for r in shown["open_reservations"]} == {"unknown"}
        assert shown["reserved_usd"] == f"{held_micros / 1_000_000:.2f}"
        assert shown["unknown_usd"] == shown["reserved_usd"]
        unknown_usd_after_crash = shown["unknown_usd"]

        # --- restart on the same home and finish the batch ------------------------------------
        proxy2 = ProxyProcess(home=home, upstreams=(f"stripe={fake.url}",), log_path=tmp_path / "proxy2.log").start()
        try:
            use_proxy(monkeypatch, home, proxy2)
            open_after_restart = keybrake_json(home, "keys", "show", key_id)["open_reservations"]
            assert {r["id"] for r in open_after_restart} == {r["id"] for r in pending_at_kill}

            # A leftover the operator settles by hand: a failed call whose hold was made but which
            # never reached the vendor (the fake never saw its key), and which the worker gives up on.
            never_sent = [r for r in unknown_outcome if r["idempotency_key"] not in charged_before_restart]
            released = never_sent[:1]
            for r in released:
                keybrake(home, "reconcile", "--reservation", str(r["id"]), "--release")
            released_keys = {r["idempotency_key"] for r in released}
            retry = [i for i in failed if f"call-{i}" not in released_keys]

            fake.latency_s = 0.2  # the point was a pile of calls in flight at the kill; retries need not wait
            client2 = stripe.StripeClient(key["vault_key"], max_network_retries=0)
            retried = run_parallel(len(retry), lambda j: client2.v1.payment_intents.create(
                params=PI, options={"idempotency_key": f"call-{retry[j]}"}), CRASH_WORKERS)
            errors = [r for r in retried if isinstance(r, BaseException)]
            assert not errors, f"{len(errors)} retries failed, e.g. {errors[0]!r}"
            replayed = {f"call-{i}" for i, r in zip(retry, retried)
                        if r.last_response.headers.get("idempotent-replayed") == "true"}
            # A replay exactly for the calls the vendor had already charged before the restart.
            assert replayed == {f"call-{i}" for i in retry} & charged_before_restart

            # The worker got its 200 for these; only the ledger missed it: the operator settles them.
            for r in settlement_lost:
                keybrake(home, "reconcile", "--reservation", str(r["id"]), "--actual-usd", "50")

            still_open = wait_until_settled(home, key_id)
            moved, objects = fake.money_moved_minor, fake.objects_created
        finally:
            proxy2.stop()

    assert still_open == 0
    final = key_counters(home, key_id)
    assert final["spent_micros"] == moved * MICROS_PER_CENT  # exactly what the vendor charged
    assert final["reserved_micros"] == 0
    assert len(objects) == CRASH_CALLS - len(released)  # every call charged exactly once (bar the released)
    assert moved == len(objects) * AMOUNT_CENTS
    shown = keybrake_json(home, "keys", "show", key_id)
    assert shown["open_reservations"] == [] and shown["reserved_usd"] == "0.00"
    with ledger(home) as db:
        by_key = db.execute("SELECT COUNT(*), COUNT(DISTINCT idempotency_key) FROM reservations WHERE key_id = ?",
                            (key_id,)).fetchone()
        settled_by_retry = db.execute(
            "SELECT COUNT(*) FROM reservations r WHERE key_id = ? AND state = 'settled' AND id IN "
            f"({','.join(str(r['id']) for r in unknown_outcome) or 'NULL'})", (key_id,)).fetchone()[0]
    assert by_key[0] == by_key[1]  # one reservation per call: a retry never opened a second hold
    assert settled_by_retry == len(unknown_outcome) - len(released)
    assert integrity(home) == "ok"

    figures.record(
        "kill_9_mid_batch",
        calls=CRASH_CALLS, workers=CRASH_WORKERS, fake_latency_s=LATENCY_S,
        in_flight_at_kill=len(pending_at_kill), peak_pending_seen=peak,
        answered_200_before_kill=len(answered), failed_client_side=len(failed),
        charged_but_unanswered=len([r for r in unknown_outcome if r["idempotency_key"] in charged_before_restart]),
        held_but_never_sent=len(never_sent),
        unknown_holds_after_restart=len(open_after_restart),
        unknown_usd_shown_after_crash=unknown_usd_after_crash,
        reserved_usd_after_crash=f"{held_micros / 1_000_000:.2f}",
        retried=len(retry), settled_by_retry_replay=len(replayed), charged_on_retry=len(retry) - len(replayed),
        settled_by_retry=settled_by_retry, answered_but_settlement_lost=len(settlement_lost),
        released_by_hand=len(released),
        final_spent_usd=f"{final['spent_micros'] / 1_000_000:.2f}", final_charged_usd=f"{moved / 100:.2f}",
        seconds=round(time.monotonic() - t0, 1), seconds_to_kill=round(killed_at - t0, 1),
    )


# ----- 4. database trouble ----------------------------------------------------------------------

OK, REFUSED = "ok", "refused_503"


def outcome(result) -> str:
    """ok, refused_503 (a well-formed Keybrake refusal), or a description of anything else."""
    if not isinstance(result, BaseException):
        return OK
    if isinstance(result, stripe.APIError) and result.http_status == 503:
        body = result.json_body if isinstance(result.json_body, dict) else {}
        headers = {k.lower(): v for k, v in (result.headers or {}).items()}
        if (body.get("error", {}).get("code"), headers.get("retry-after")) == ("keybrake_unavailable", "2"):
            return REFUSED
        return f"503 of another shape: {body} {headers}"
    return f"{type(result).__name__}: {result}"[:300]


def timed_batch(client: stripe.StripeClient, n: int, workers: int) -> tuple[list[str], float]:
    """n payment intents in parallel (no SDK retries); the outcomes and the longest call's seconds."""

    def call(_i: int):
        began = time.monotonic()
        try:
            return client.v1.payment_intents.create(params=PI), time.monotonic() - began
        except Exception as error:  # noqa: BLE001
            return error, time.monotonic() - began

    timed = run_parallel(n, call, workers)
    return [outcome(r) for r, _ in timed], max(s for _, s in timed)


def wait_for_recovery(client: stripe.StripeClient, timeout_s: float = 30.0) -> tuple[float, int]:
    """Call once every 0.1 s until a call succeeds: (seconds it took, refusals meanwhile)."""
    began, refusals = time.monotonic(), 0
    while True:
        result = outcome(_try(lambda: client.v1.payment_intents.create(params=PI)))
        if result == OK:
            return time.monotonic() - began, refusals
        assert result == REFUSED, result
        refusals += 1
        assert time.monotonic() - began < timeout_s, f"no recovery within {timeout_s} s"
        time.sleep(0.1)


def _try(call):
    try:
        return call()
    except Exception as error:  # noqa: BLE001
        return error


def assert_books_exact(home: Path, key_id: str, fake: FakeStripe) -> None:
    assert wait_until_settled(home, key_id) == 0
    counters = key_counters(home, key_id)
    assert counters["spent_micros"] == fake.money_moved_minor * MICROS_PER_CENT
    assert counters["reserved_micros"] == 0
    assert integrity(home) == "ok"


TROUBLE_CALLS, TROUBLE_WORKERS = 12, 6


def test_locked_database_refuses_a_parallel_batch_then_recovers(home, tmp_path, monkeypatch, figures):
    key = issue_key(home)
    with FakeStripe(secret=REAL_SECRET) as fake:
        proxy = ProxyProcess(home=home, upstreams=(f"stripe={fake.url}",), log_path=tmp_path / "proxy.log",
                             extra_args=("--db-busy-timeout", "0.3")).start()
        blocker = sqlite3.connect(home / "keybrake.db", isolation_level=None)
        try:
            use_proxy(monkeypatch, home, proxy)
            client = stripe.StripeClient(key["vault_key"], max_network_retries=0)
            before, _ = timed_batch(client, TROUBLE_CALLS, TROUBLE_WORKERS)
            assert before == [OK] * TROUBLE_CALLS
            assert wait_until_settled(home, key["key_id"]) == 0  # nothing in flight when the trouble starts

            blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock past the busy timeout
            hits = fake.hits
            during, slowest = timed_batch(client, TROUBLE_CALLS, TROUBLE_WORKERS)
            hits_during = fake.hits - hits
            blocker.execute("ROLLBACK")  # the trouble ends
            recovery_s, refusals_while_recovering = wait_for_recovery(client)

            after, _ = timed_batch(client, TROUBLE_CALLS, TROUBLE_WORKERS)
            assert proxy.process.poll() is None  # it kept running
            assert_books_exact(home, key["key_id"], fake)
            moved = fake.money_moved_minor
        finally:
            blocker.close()
            proxy.stop()
    assert during == [REFUSED] * TROUBLE_CALLS, during
    assert hits_during == 0
    assert after == [OK] * TROUBLE_CALLS
    assert moved == (2 * TROUBLE_CALLS + 1) * AMOUNT_CENTS
    assert key["vault_key"] not in proxy.log_text()
    figures.record("db_locked", calls_during_trouble=TROUBLE_CALLS, workers=TROUBLE_WORKERS,
                   refusals_during_trouble=during.count(REFUSED), successes_during_trouble=during.count(OK),
                   fake_hits_during_trouble=hits_during, busy_timeout_s=0.3,
                   slowest_refusal_s=round(slowest, 2), seconds_to_recover=round(recovery_s, 2),
                   refusals_while_recovering=refusals_while_recovering)


def test_lock_held_across_a_settlement_keeps_the_hold_counted(home, tmp_path, monkeypatch, figures):
    """A call admitted before the lock is taken gets its 200, but its settlement meets the lock."""
    key = issue_key(home)
    key_id = key["key_id"]
    with FakeStripe(secret=REAL_SECRET, latency_s=1.0) as fake:
        proxy = ProxyProcess(home=home, upstreams=(f"stripe={fake.url}",), log_path=tmp_path / "proxy.log",
                             extra_args=("--db-busy-timeout", "0.3")).start()
        blocker = sqlite3.connect(home / "keybrake.db", isolation_level=None)
        try:
            use_proxy(monkeypatch, home, proxy)
            client = stripe.StripeClient(key["vault_key"], max_network_retries=0)
            result: list = []
            caller = threading.Thread(target=lambda: result.append(_try(lambda: client.v1.payment_intents.create(
                params=PI, options={"idempotency_key": "settle-under-lock"}))), daemon=True)
            caller.start()
            deadline = time.monotonic() + 30
            while fake.hits == 0 and time.monotonic() < deadline:  # admitted, charged, answer held 1 s
                time.sleep(0.01)
            assert fake.hits == 1
            blocker.execute("BEGIN IMMEDIATE")
            caller.join(timeout=60)
            time.sleep(1.0)  # well past the busy timeout the settlement waits for
            blocker.execute("ROLLBACK")
            # The gate retries a settlement while the ledger is unavailable (0.2, 0.5, 1, 2 s, ...):
            # give those retries time to land now that the lock is free.
            deadline = time.monotonic() + 10
            while True:
                with ledger(home) as db:
                    hold = db.execute("SELECT * FROM reservations WHERE key_id = ?", (key_id,)).fetchone()
                if hold["state"] == "settled" or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            counters = key_counters(home, key_id)
            log = proxy.log_text()
            assert outcome(result[0]) == OK  # the worker got its PaymentIntent
            # Never under-counted: the charge is either settled or still held at its full price.
            assert counters["spent_micros"] + counters["reserved_micros"] == fake.money_moved_minor * MICROS_PER_CENT
            if hold["state"] != "settled":
                assert "could not settle reservation" in log
                keybrake(home, "reconcile", "--reservation", str(hold["id"]), "--actual-usd", "50")
            assert_books_exact(home, key_id, fake)
        finally:
            blocker.close()
            proxy.stop()
    figures.record("db_locked_during_settlement", client_got_200=True, hold_state_after_lock_released=hold["state"],
                   spent_usd_before_reconcile=f"{counters['spent_micros'] / 1e6:.2f}",
                   reserved_usd_before_reconcile=f"{counters['reserved_micros'] / 1e6:.2f}",
                   settled_by_hand=hold["state"] != "settled")


# Disk full and read-only need a filesystem of their own: a small tmpfs (root may mount here).

def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60)


@pytest.fixture
def tiny_fs(tmp_path):
    """A 8 MiB tmpfs, always unmounted afterwards (lazily if something still holds it)."""
    mount_point = tmp_path / "tinyfs"
    mount_point.mkdir()
    mounted = _run("mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "keybrake-test", str(mount_point))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount rights): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if _run("umount", str(mount_point)).returncode != 0:
            _run("umount", "-l", str(mount_point))


def home_on(fs: Path) -> Path:
    home = fs / "home"
    keybrake(home, "init")
    keybrake(home, "secret", "set", "stripe", stdin=REAL_SECRET + "\n")
    return home


def fill(fs: Path) -> Path:
    """A filler file taking every free block, so the next byte any file needs fails with ENOSPC."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        # 64 MiB, then a MiB in pages, then a page in bytes: bounded, and more than each step can need.
        for chunk, rounds in ((1 << 20, 64), (1 << 12, 256), (1, 4096)):
            try:
                for _ in range(rounds):
                    os.write(fd, b"\0" * chunk)
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
    finally:
        os.close(fd)
    assert os.statvfs(fs).f_bavail == 0
    return filler


def test_disk_full_refuses_then_recovers_when_space_returns(tiny_fs, tmp_path, monkeypatch, figures):
    home = home_on(tiny_fs)
    key = issue_key(home)
    with FakeStripe(secret=REAL_SECRET) as fake:
        proxy = ProxyProcess(home=home, upstreams=(f"stripe={fake.url}",), log_path=tmp_path / "proxy.log").start()
        filler = None
        try:
            use_proxy(monkeypatch, home, proxy)
            client = stripe.StripeClient(key["vault_key"], max_network_retries=0)
            before, _ = timed_batch(client, TROUBLE_CALLS, TROUBLE_WORKERS)
            assert before == [OK] * TROUBLE_CALLS
            assert wait_until_settled(home, key["key_id"]) == 0
            # After a TRUNCATE checkpoint the WAL file is empty, so the proxy's next commit must
            # grow it: with no free block left that append fails (SQLITE_FULL). Without it, commits
            # would reuse WAL space already allocated and the disk would fill only much later.
            with ledger(home) as db:
                assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
            filler = fill(tiny_fs)
            hits = fake.hits
            during, _ = timed_batch(client, TROUBLE_CALLS, TROUBLE_WORKERS)
            hits_during = fake.hits - hits
            filler.unlink()  # the trouble ends
            filler = None
            recovery_s, refusals_while_recovering = wait_for_recovery(client)
            after, _ = timed_batch(client, TROUBLE_CALLS, TROUBLE_WORKERS)
            assert proxy.process.poll() is None
            assert_books_exact(home, key["key_id"], fake)
            moved = fake.money_moved_minor
        finally:
            if filler is not None:
                filler.unlink(missing_ok=True)
            proxy.stop()
    log = proxy.log_text()
    assert during == [REFUSED] * TROUBLE_CALLS, during
    assert hits_during == 0
    assert after == [OK] * TROUBLE_CALLS
    assert moved == (2 * TROUBLE_CALLS + 1) * AMOUNT_CENTS
    assert "database or disk is full" in log
    figures.record("db_disk_full", calls_during_trouble=TROUBLE_CALLS, refusals_during_trouble=during.count(REFUSED),
                   fake_hits_during_trouble=hits_during, seconds_to_recover=round(recovery_s, 2),
                   refusals_while_recovering=refusals_while_recovering)


@pytest.fixture
def read_only_view(tmp_path):
    """(writable dir, a read-only bind mount of it), always unmounted afterwards."""
    writable, view = tmp_path / "rw", tmp_path / "ro-view"
    writable.mkdir()
    view.mkdir()
    if _run("mount", "--bind", str(writable), str(view)).returncode != 0:
        pytest.skip("cannot bind-mount here (needs root and mount rights)")
    try:
        remounted = _run("mount", "-o", "remount,bind,ro", str(view))
        assert remounted.returncode == 0, remounted.stderr
        yield writable, view
    finally:
        if _run("umount", str(view)).returncode != 0:
            _run("umount", "-l", str(view))


def test_read_only_volume_refuses_then_recovers_when_writable(read_only_view, tmp_path, monkeypatch, figures):
    """The proxy starts on a home whose volume is mounted read-only, then the volume turns writable.

    Why at start: Linux refuses to remount a filesystem read-only while a process holds a file
    on it open for writing (EBUSY), and SQLite holds the database open read-write for the
    proxy's lifetime, so "read-only under a running proxy" cannot be produced honestly here.
    A read-only volume at start is the case operators meet (a mis-mounted volume), and the
    kernel's EROFS reaches SQLite for real.
    """
    writable, view = read_only_view
    key = issue_key(home_on(writable))
    home = view / "home"  # the same home, seen through the read-only mount
    with FakeStripe(secret=REAL_SECRET) as fake:
        proxy = ProxyProcess(home=home, upstreams=(f"stripe={fake.url}",), log_path=tmp_path / "proxy.log").start()
        try:
            use_proxy(monkeypatch, writable / "home", proxy)  # `keybrake env` writes the CA bundle
            client = stripe.StripeClient(key["vault_key"], max_network_retries=0)
            during, _ = timed_batch(client, TROUBLE_CALLS, TROUBLE_WORKERS)
            hits_during = fake.hits
            assert proxy.process.poll() is None
            assert _run("mount", "-o", "remount,bind,rw", str(view)).returncode == 0  # the trouble ends
            recovery_s, refusals_while_recovering = wait_for_recovery(client)
            after, _ = timed_batch(client, TROUBLE_CALLS, TROUBLE_WORKERS)
            assert_books_exact(home, key["key_id"], fake)
            moved = fake.money_moved_minor
        finally:
            proxy.stop()
    log = proxy.log_text()
    assert during == [REFUSED] * TROUBLE_CALLS, during
    assert hits_during == 0
    assert after == [OK] * TROUBLE_CALLS
    assert moved == (TROUBLE_CALLS + 1) * AMOUNT_CENTS
    assert "cannot open the ledger yet" in log and "the ledger is open now" in log
    figures.record("db_read_only", calls_during_trouble=TROUBLE_CALLS, refusals_during_trouble=during.count(REFUSED),
                   fake_hits_during_trouble=hits_during, seconds_to_recover=round(recovery_s, 2),
                   refusals_while_recovering=refusals_while_recovering)
