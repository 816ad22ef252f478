"""Waiting for settlements: the proxy settles a call just after writing its reply."""

import time
from collections.abc import Callable


def until_settled(count_open: Callable[[], int], timeout_s: float = 30.0, interval_s: float = 0.05) -> int:
    """Poll `count_open` (bounded) until no hold is open; returns how many stay open when the
    bound runs out (0 once every one settled)."""
    deadline = time.monotonic() + timeout_s
    while (still_open := count_open()) and time.monotonic() < deadline:
        time.sleep(interval_s)
    return still_open
