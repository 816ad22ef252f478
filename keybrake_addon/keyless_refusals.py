"""How much a client without a valid vault key can make Keybrake write: a bounded amount a minute.

A refusal of a request without a key of ours (none sent, garbage, a real vendor secret, an
unknown vault key, or a request refused before its key was looked at) used to write
one audit row each, so anyone who could reach a listener could fill the ledger's disk. Now, per
window of WINDOW_S seconds and per process (replica):

- the first ROWS_PER_ADDRESS refusals from one client address are audited one row each;
- the first ROWS_PER_WINDOW such rows in all are written; past that, nothing is written one by one;
- the refusals past those bounds are counted, and written at the window's end as summary rows:
  one per address that went over its own bound, and one for everything past the global bound.

So a window's rows are at most ROWS_PER_WINDOW + ROWS_PER_WINDOW // ROWS_PER_ADDRESS + 1
(`MAX_ROWS_PER_WINDOW`) whatever is sent, from however many addresses. An IPv6 client is one
address per /64 (one host usually owns a whole /64), an IPv4-mapped IPv6 address is its IPv4.

Pure: time comes in as an argument (`now`, any monotonic seconds), so the tests drive the clock.
"""

import ipaddress
import time
from collections import Counter
from dataclasses import dataclass, field

WINDOW_S = 60.0
ROWS_PER_ADDRESS = 10
ROWS_PER_WINDOW = 60
MAX_ROWS_PER_WINDOW = ROWS_PER_WINDOW + ROWS_PER_WINDOW // ROWS_PER_ADDRESS + 1
SAMPLE_ADDRESSES = 5  # named in the global summary, so the operator sees where the flood came from
IPV6_GROUP_PREFIX = 64


def client_group(address: str | None) -> str:
    """The unit a client is limited by: its IPv4 address, or its IPv6 /64."""
    if not address:
        return "unknown"
    try:
        parsed = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return address[:64]  # not an IP address (a Unix socket, a test double): itself, bounded
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((parsed, IPV6_GROUP_PREFIX), strict=False))
    return str(parsed)


@dataclass(frozen=True)
class Summary:
    """Refusals of one window that were not written one by one."""

    window_start: float  # in the caller's clock
    suppressed: int
    codes: tuple[tuple[str, int], ...]  # refusal code -> count, the most frequent first
    vendor: str  # the vendor of the first one (an audit row names one)
    group: str | None  # the address (or /64) that went over its bound; None: past the global bound
    sample: tuple[str, ...] = ()  # for the global summary: a few of the addresses it covers
    audited: int = 0  # for an address: how many of its refusals were written one by one

    def message(self, window_s: float = WINDOW_S) -> str:
        kinds = ", ".join(f"{code} x{count}" for code, count in self.codes)
        if self.group is not None:
            return (f"{self.suppressed} more refusals without a valid vault key from {self.group} within "
                    f"{window_s:g} s were not audited one by one (the first {self.audited} were): {kinds}")
        return (f"{self.suppressed} refusals without a valid vault key within {window_s:g} s were not audited "
                f"one by one: past the bound of {ROWS_PER_WINDOW} rows per {window_s:g} s for all addresses "
                f"(from {', '.join(self.sample) or '-'}{' and others' if len(self.sample) >= SAMPLE_ADDRESSES else ''}): "
                f"{kinds}")


@dataclass
class _Tally:
    vendor: str
    count: int = 0
    codes: Counter = field(default_factory=Counter)

    def add(self, code: str) -> None:
        self.count += 1
        self.codes[code] += 1


@dataclass
class _Address:
    audited: int = 0
    over: _Tally | None = None


class KeylessRefusalLimiter:
    def __init__(self, *, rows_per_address: int = ROWS_PER_ADDRESS, rows_per_window: int = ROWS_PER_WINDOW,
                 window_s: float = WINDOW_S) -> None:
        self.rows_per_address, self.rows_per_window, self.window_s = rows_per_address, rows_per_window, window_s
        self._window: int | None = None
        self._addresses: dict[str, _Address] = {}  # only addresses that wrote a row: at most rows_per_window
        self._audited = 0
        self._overflow: _Tally | None = None
        self._sample: list[str] = []
        self._due: list[Summary] = []

    @property
    def max_rows_per_window(self) -> int:
        return self.rows_per_window + self.rows_per_window // max(1, self.rows_per_address) + 1

    def take(self, address: str | None, code: str, vendor: str, now: float) -> bool:
        """Whether this refusal gets an audit row of its own; if not, it is counted for a summary."""
        self._roll(now)
        group = client_group(address)
        known = self._addresses.get(group)
        if known is not None and known.audited >= self.rows_per_address:
            if known.over is None:
                known.over = _Tally(vendor)
            known.over.add(code)
            return False
        if self._audited >= self.rows_per_window:
            if self._overflow is None:
                self._overflow = _Tally(vendor)
            self._overflow.add(code)
            if len(self._sample) < SAMPLE_ADDRESSES and group not in self._sample:
                self._sample.append(group)
            return False
        if known is None:
            known = self._addresses[group] = _Address()
        known.audited += 1
        self._audited += 1
        return True

    def summaries(self, now: float, *, final: bool = False) -> list[Summary]:
        """The summaries of windows that have ended (with `final`, of the current one too), once."""
        self._roll(now)
        if final:
            self._close_window()
        due, self._due = self._due, []
        return due

    def seconds_to_window_end(self, now: float) -> float:
        return (int(now // self.window_s) + 1) * self.window_s - now

    @property
    def pending(self) -> bool:
        """Whether the current window has refusals waiting for a summary."""
        return self._overflow is not None or any(a.over is not None for a in self._addresses.values())

    def _roll(self, now: float) -> None:
        window = int(now // self.window_s)
        if window != self._window:
            self._close_window()
            self._window = window

    def _close_window(self) -> None:
        start = (self._window or 0) * self.window_s
        for group, known in self._addresses.items():
            if known.over is not None:
                self._due.append(_summary(start, known.over, group, audited=known.audited))
        if self._overflow is not None:
            self._due.append(_summary(start, self._overflow, None, sample=tuple(self._sample)))
        self._addresses, self._audited, self._overflow, self._sample = {}, 0, None, []


def _summary(start: float, tally: _Tally, group: str | None, **extra) -> Summary:
    return Summary(start, tally.count, tuple(tally.codes.most_common()), tally.vendor, group, **extra)


class LogBudget:
    """At most `per_window` lines a window from one place in the code that a stranger can trigger
    once per request; the number left out is logged with the first line of a later window."""

    def __init__(self, per_window: int = 30, window_s: float = WINDOW_S, clock=time.monotonic) -> None:
        self.per_window, self.window_s = per_window, window_s
        self._clock = clock
        self._window: int | None = None
        self._logged = 0
        self._left_out = 0

    def log(self, logger, level: int, message: str, *args) -> bool:
        """Log the line if the budget allows; returns whether it did."""
        window = int(self._clock() // self.window_s)
        if window != self._window:
            if self._left_out:
                logger.log(level, "keybrake: %d log lines like the next one were left out (at most %d per %g s)",
                           self._left_out, self.per_window, self.window_s)
            self._window, self._logged, self._left_out = window, 0, 0
        if self._logged >= self.per_window:
            self._left_out += 1
            return False
        self._logged += 1
        logger.log(level, message, *args)
        return True
