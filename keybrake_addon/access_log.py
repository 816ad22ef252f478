"""The access log: one bounded line per vendor call the gate forwarded, and one per refusal.

The audit trail in the ledger is the record; this is the same traffic as a stream, for the log
pipeline an operator already runs (journald, Loki, Datadog, CloudWatch). A line carries the
time, the key id and its label, the vendor, method and path, the decision, the status, the
amounts, the vendor's object id and the duration. Never a header: no vault key, no vendor
secret, no Proxy-Authorization and no admin token can reach it from there, and a path segment
shaped like any of them is replaced by `[redacted]` (a caller may put one where it does not belong).

Every string a stranger chose (path, label, object id) is bounded, and in the text format its
control and invisible formatting characters are escaped: a line is one line, whatever was sent.

Writing a line never fails a call: an error is logged once and the line is dropped.
"""

import json
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from logging.handlers import WatchedFileHandler
from typing import TYPE_CHECKING

from .money import format_usd
from .vendors import VENDORS
from .vendors.base import RenderedResponse

if TYPE_CHECKING:
    from .gate import Ticket
    from .ledger.base import KeyRecord, SettleRequest

logger = logging.getLogger("keybrake")

FORMATS = ("json", "text", "off")
REFUSAL_HEADER = "x-keybrake-refusal"
REDACTED = "[redacted]"
# Each field's limit, in characters of the written line (escapes included).
LIMITS = {"vendor": 16, "method": 16, "path": 256, "decision": 48, "outcome": 16, "key_id": 64, "label": 128,
          "object_id": 128}
# Every field at its limit, with the fixed ones, still fits: an operator's log shipper can rely on it.
MAX_LINE_CHARS = 1024
TRUNCATED = "..."
REDACT_MARGIN = 256  # longer than any credential (a Stripe live key is ~110 characters)

# Keybrake's own credentials, wherever they appear: vault keys (sk_kb_, re_kb_, kb_ + 43),
# admin and worker tokens (kba_, kbw_ + 43 url-safe), and Stripe secret and restricted keys.
_CREDENTIAL = re.compile(r"(?:sk_kb_|re_kb_|kb_)[0-9A-Za-z]{43}|kb[aw]_[0-9A-Za-z_-]{16,}"
                         r"|[sr]k_(?:live|test)_[0-9A-Za-z]+")


@dataclass(frozen=True)
class AccessEntry:
    """One line's facts, before formatting."""

    event: str  # "call" (forwarded, with its outcome) or "refusal"
    vendor: str
    method: str
    path: str
    decision: str  # "allowed", or the refusal's code (keybrake_cap_exceeded...)
    status: int | None  # what the client got (None: the vendor never answered)
    key_id: str | None = None
    label: str | None = None
    outcome: str | None = None  # for a call: settled, released, unknown or leave
    reserved_micros: int = 0
    actual_micros: int | None = None
    object_id: str | None = None
    duration_ms: float | None = None


def call_entry(ticket: "Ticket", settlement: "SettleRequest") -> AccessEntry:
    return AccessEntry(
        "call", ticket.vendor.NAME, ticket.method, ticket.path, "allowed", settlement.status, ticket.key_id,
        ticket.key.spec.label, settlement.resolution.value, ticket.reserved_micros, settlement.actual_micros,
        " ".join(settlement.object_ids) or None, settlement.duration_ms)


def refusal_entry(vendor: str, method: str, path: str, refusal: RenderedResponse, key: "KeyRecord | None",
                  duration_ms: float | None) -> AccessEntry:
    return AccessEntry("refusal", vendor, method, path, refusal.headers.get(REFUSAL_HEADER, "refused"),
                       refusal.status, key.key_id if key else None, key.spec.label if key else None,
                       duration_ms=duration_ms)


# --- formatting -------------------------------------------------------------------------------

def redact(text: str, vendor: str | None = None) -> str:
    """`text` with every credential-shaped part replaced; with the vendor, also whole path segments
    shaped like that vendor's real secret (a Twilio auth token is 32 plain alphanumerics)."""
    text = _CREDENTIAL.sub(REDACTED, text)
    module = VENDORS.get(vendor or "")
    if module is None or "/" not in text:
        return text
    return "/".join(REDACTED if segment and module.looks_like_real_secret(segment) else segment
                    for segment in text.split("/"))


def _redacted_start(text: str, limit: int, vendor: str | None) -> str:
    """Redacted before it is cut, so no cut leaves the start of a credential that no longer matches;
    only a bounded start is looked at (a credential is shorter than the margin)."""
    return redact(text[:limit + REDACT_MARGIN], vendor)


def text_escape(char: str) -> str:
    """A character as the text format writes it: control, invisible and separator characters escaped
    (a terminal acts on ESC, a newline forges a line, a bidi override reorders what is shown)."""
    if char in '"\\':
        return "\\" + char
    if char.isprintable():  # False for C0, C1, formatting (Cf), separators other than space, unassigned
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def json_escape(char: str) -> str:
    return json.dumps(char)[1:-1]  # ASCII only: every non-ASCII character as \\uXXXX


def _plain(text: str) -> bool:
    """Printable ASCII without a quote or a backslash: written as is by both formats."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


def fit(text: str, limit: int, escape: Callable[[str], str]) -> str:
    """`text` if its escaped form is at most `limit` characters; else its longest start that,
    escaped and followed by `...`, is."""
    if len(text) <= limit and _plain(text):
        return text  # the usual case, without looking at each character
    costs = [len(escape(char)) for char in text[:limit + 1]]  # each costs 1 at least: no more can fit
    if len(text) <= limit and sum(costs) <= limit:
        return text
    used, room = 0, limit - len(TRUNCATED)
    for index, cost in enumerate(costs):
        if used + cost > room:
            return text[:index] + TRUNCATED
        used += cost
    return text  # unreachable: the sum was over the limit


def _fields(entry: AccessEntry, at: datetime, escape: Callable[[str], str]) -> dict[str, object]:
    # Only the strangers' long strings are searched: the rest are Keybrake's own values, or the method,
    # which its 16 characters keep shorter than any credential.
    raw = {"vendor": entry.vendor, "method": entry.method, "decision": entry.decision, "outcome": entry.outcome,
           "key_id": entry.key_id,
           "path": _redacted_start(entry.path, LIMITS["path"], entry.vendor),
           "label": None if entry.label is None else _redacted_start(entry.label, LIMITS["label"], None),
           "object_id": None if entry.object_id is None else _redacted_start(entry.object_id, LIMITS["object_id"],
                                                                              None)}
    shown = {name: None if value is None else fit(value, LIMITS[name], escape) for name, value in raw.items()}
    return {
        "ts": at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "event": entry.event, "vendor": shown["vendor"], "method": shown["method"], "path": shown["path"],
        "status": entry.status, "decision": shown["decision"], "outcome": shown["outcome"],
        "key_id": shown["key_id"], "label": shown["label"],
        "reserved_usd": format_usd(entry.reserved_micros),
        "actual_usd": None if entry.actual_micros is None else format_usd(entry.actual_micros),
        "object_id": shown["object_id"],
        "duration_ms": None if entry.duration_ms is None else round(entry.duration_ms, 1),
    }


def format_json(entry: AccessEntry, at: datetime) -> str:
    """One JSON object on one line (json.dumps escapes every control and non-ASCII character)."""
    return json.dumps(_fields(entry, at, json_escape))


def format_text(entry: AccessEntry, at: datetime) -> str:
    """logfmt: `name=value` pairs; a value is quoted when it holds a space, a quote, a backslash or `=`."""
    fields = _fields(entry, at, text_escape)
    return " ".join(f"{name}={_logfmt_value(value)}" for name, value in fields.items())


def _logfmt_value(value) -> str:
    if value is None:
        return "-"
    text = str(value)
    if not _plain(text):
        text = "".join(map(text_escape, text))
    if text == "" or any(char in text for char in ' ="\\'):
        return f'"{text}"'
    return text


FORMATTERS: dict[str, Callable[[AccessEntry, datetime], str]] = {"json": format_json, "text": format_text}


# --- writing ----------------------------------------------------------------------------------

class _FileSink:
    """Appends lines to a file; reopens it once logrotate (or anyone) has moved or removed it."""

    def __init__(self, path: str) -> None:
        self._handler = WatchedFileHandler(path, encoding="utf-8")  # opens now: a bad path fails at start

    def write(self, line: str) -> None:
        self._handler.reopenIfNeeded()
        self._handler.stream.write(line + "\n")
        self._handler.stream.flush()

    def close(self) -> None:
        self._handler.close()


class _StderrSink:
    def write(self, line: str) -> None:
        sys.stderr.write(line + "\n")  # stderr is line-buffered: one write, one line

    def close(self) -> None:
        pass


class AccessLog:
    """Where the gate reports calls and refusals. Off until configured; reconfigurable at run time."""

    def __init__(self) -> None:
        self._format: Callable[[AccessEntry, datetime], str] | None = None
        self._sink: _FileSink | _StderrSink | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self._format is not None

    def configure(self, fmt: str, path: str | None = None) -> None:
        """`fmt` json, text or off; lines go to `path` (appended) or to stderr. Raises OSError for a bad path."""
        if fmt not in FORMATS:
            raise ValueError(f"the access log format is one of {', '.join(FORMATS)}, not {fmt!r}")
        if fmt == "off" and path:
            raise ValueError("an access log file needs a format (json or text), not off")
        sink = (_FileSink(path) if path else _StderrSink()) if fmt != "off" else None
        self.close()
        self._sink, self._format, self._failed = sink, FORMATTERS.get(fmt), False

    def close(self) -> None:
        sink, self._sink, self._format = self._sink, None, None
        if sink is not None:
            sink.close()

    def call(self, ticket: "Ticket", settlement: "SettleRequest") -> None:
        if self._format is not None:
            self._write(lambda: call_entry(ticket, settlement))

    def refused(self, vendor: str, method: str, path: str, refusal: RenderedResponse,
                key: "KeyRecord | None" = None, duration_ms: float | None = None) -> None:
        if self._format is not None:
            self._write(lambda: refusal_entry(vendor, method, path, refusal, key, duration_ms))

    def _write(self, entry: Callable[[], AccessEntry]) -> None:
        try:
            self._sink.write(self._format(entry(), datetime.now(UTC)))
        except Exception as failure:  # noqa: BLE001 - a log line must never fail or stall a call
            if not self._failed:
                self._failed = True
                logger.warning("keybrake: cannot write the access log (%s); lines are dropped until it can",
                               type(failure).__name__)
        else:
            self._failed = False


ACCESS_LOG_OFF = AccessLog()  # a Gate's until the proxy gives it the configured one
