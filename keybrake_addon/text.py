"""Strangers' text on an operator's screen (control characters made visible, never interpreted),
and in a database (what no backend can store, replaced)."""

import re

# C0, DEL and C1: what a terminal may act on (ESC starts a sequence that can move the cursor,
# retitle the window or rewrite what is shown; a newline forges a row).
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


# What a database cannot store: PostgreSQL's text refuses NUL, and no driver encodes a lone
# surrogate (mitmproxy's stand-in for a byte that is not UTF-8).
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """`text` with U+FFFD in place of each character no ledger backend can store."""
    if text.isascii() and "\x00" not in text:
        return text  # nearly always: no scan
    return _UNSTORABLE.sub("\ufffd", text)


def is_storable(text: str) -> bool:
    return _UNSTORABLE.search(text) is None


def has_control_characters(text: str) -> bool:
    return CONTROL_CHARACTERS.search(text) is not None


def visible(text: str) -> str:
    """`text` with each control character shown as an escape such as \\x1b."""
    return CONTROL_CHARACTERS.sub(lambda match: f"\\x{ord(match[0]):02x}", text)


def loggable(text: str, limit: int = 120) -> str:
    """A stranger's text (a path, a header) as a log line may quote it: short and on one line."""
    return visible(text if len(text) <= limit else text[:limit] + "...")
