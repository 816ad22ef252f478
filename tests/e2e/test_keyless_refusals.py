"""Anyone who can reach a listener, with no vault key, grows the ledger by a bounded amount a minute.

5,000 requests without a valid key (none, garbage, unknown vault keys, a real secret, long paths and
Idempotency-Keys), from loopback through both listeners of a real proxy: the audit table gets at
most MAX_ROWS_PER_WINDOW rows a minute (and the summaries written when the proxy stops), and the
summary rows account for every refusal not written one by one.
"""

import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from keybrake_addon.keyless_refusals import MAX_ROWS_PER_WINDOW, WINDOW_S
from keybrake_addon.ledger.base import AuditFilter
from keybrake_addon.ledger.store import SUMMARY_DECISION
from keybrake_addon.proxy_process import ProxyProcess

from .helpers import REAL_SECRET

# On SQLite only: the ledger's part (no row for an invalid key when the gate bounds them) is in the
# contract suite, on both backends; this test is about the proxy, and 5,000 requests take a while.
THROUGH_API, THROUGH_FORWARD, THREADS = 4_800, 200, 4
# A row's stored text: method (16) + path (512) + Idempotency-Key (512) + our own message and the
# fixed columns. A summary row's message names at most 5 addresses and the refusal codes.
ROW_TEXT_BYTES = 2_048
SUMMARY_ROWS_AT_STOP = MAX_ROWS_PER_WINDOW - 60  # the current window's summaries, written by the drain
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def unknown_vault_key() -> str:
    return "sk_kb_" + "".join(secrets.choice(ALPHABET) for _ in range(43))  # shaped right, never issued


def keyless_request(index: int) -> tuple[str, dict[str, str]]:
    """One of a stranger's requests: the path (under /stripe) and its headers."""
    variant = index % 6
    if variant == 0:
        return "/v1/balance", {}
    if variant == 1:
        return "/v1/balance", {"authorization": "Bearer garbage"}
    if variant == 2:  # reaches the ledger: an unknown key is known only once looked up
        return "/v1/payment_intents", {"authorization": f"Bearer {unknown_vault_key()}"}
    if variant == 3:
        return "/v1/balance", {"authorization": f"Bearer {REAL_SECRET}"}
    if variant == 4:
        return "/v1/charges/" + "x" * 8_000, {}
    return "/v1/customers", {"idempotency-key": "k" * 8_000, "authorization": "Bearer sk_live_nope"}


def database_bytes(ledger) -> int:
    """The SQLite database's size as a reader sees it (the WAL's pages included); only the audit grows here."""
    with ledger.database.reading() as tx:
        return tx.row("SELECT page_count * page_size AS size FROM pragma_page_count(), pragma_page_size()")["size"]


def text_bytes(row: dict) -> int:
    return sum(len(str(value).encode()) for value in row.values() if value is not None)


def send(proxy: ProxyProcess, indexes: range) -> list[int]:
    statuses = []
    with httpx.Client(base_url=proxy.api_url + "/stripe", timeout=30) as client:
        for index in indexes:
            path, headers = keyless_request(index)
            statuses.append(client.post(path, headers=headers, data={"amount": "100"}).status_code)
    return statuses


def send_forward(proxy: ProxyProcess, count: int) -> list[int]:
    """Plain-HTTP proxy requests to the vendor host (no CONNECT): the forward listener's gate."""
    with httpx.Client(proxy=proxy.url, timeout=30) as client:
        return [client.get("http://api.stripe.com/v1/balance").status_code for _ in range(count)]


def test_five_thousand_keyless_requests_grow_the_audit_by_at_most_the_bound(api_proxy, fake_stripe, ledger_of):
    ledger = ledger_of()
    bytes_before = database_bytes(ledger)
    started = time.monotonic()
    share = THROUGH_API // THREADS
    with ThreadPoolExecutor(THREADS + 1) as pool:
        api = [pool.submit(send, api_proxy, range(i * share, (i + 1) * share)) for i in range(THREADS)]
        forward = pool.submit(send_forward, api_proxy, THROUGH_FORWARD)
        statuses = [status for future in api for status in future.result()] + forward.result()
    elapsed = time.monotonic() - started
    api_proxy.stop()  # the drain writes the summaries of the current window

    assert len(statuses) == THROUGH_API + THROUGH_FORWARD
    assert set(statuses) <= {400, 401}, sorted(set(statuses))
    assert fake_stripe.hits == 0

    rows = ledger.audit_rows(AuditFilter())
    windows = int(elapsed // WINDOW_S) + 2  # the windows the run can have touched
    bound = windows * MAX_ROWS_PER_WINDOW + SUMMARY_ROWS_AT_STOP
    assert len(rows) <= bound, f"{len(rows)} audit rows for {len(statuses)} refusals in {elapsed:.1f} s"

    # Every refusal is accounted for: in a row of its own, or counted in a summary row.
    summaries = [row for row in rows if row["decision"] == SUMMARY_DECISION]
    counted = sum(int(re.match(r"(\d+) ", row["message"])[1]) for row in summaries)
    assert len(rows) - len(summaries) + counted == len(statuses)
    assert summaries and all("127.0.0.1" in row["message"] for row in summaries)

    # What those rows hold is bounded too: in the rows themselves, and on disk.
    assert all(text_bytes(row) <= ROW_TEXT_BYTES for row in rows), max(map(text_bytes, rows))
    grown = database_bytes(ledger) - bytes_before
    assert grown <= bound * ROW_TEXT_BYTES * 2, f"the audit grew by {grown} bytes"  # x2: pages and indexes

    # The log says so, in a line per summary, and not a line per refusal.
    log = api_proxy.log_text()
    assert log.count("more refusals without a valid vault key from 127.0.0.1") == len(summaries)
    assert len(log.splitlines()) < 100
