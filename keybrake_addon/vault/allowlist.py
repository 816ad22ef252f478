"""Endpoint allowlists: `METHOD /path` patterns where `*` is one path segment and `**` the rest."""

import re
from dataclasses import dataclass
from functools import lru_cache

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "*"})


class InvalidPattern(ValueError):
    pass


@dataclass(frozen=True)
class EndpointPattern:
    method: str
    path: str
    regex: re.Pattern[str]

    def matches(self, method: str, path: str) -> bool:
        return (self.method == "*" or self.method == method.upper()) and bool(self.regex.fullmatch(path))


@lru_cache(maxsize=4096)
def parse_pattern(text: str) -> EndpointPattern:
    parts = text.strip().split()
    if len(parts) != 2:
        raise InvalidPattern(f"an allowlist entry is 'METHOD /path', got {text!r}")
    method, path = parts[0].upper(), parts[1]
    if method not in _METHODS:
        raise InvalidPattern(f"unknown HTTP method {parts[0]!r} in {text!r}")
    if not path.startswith("/"):
        raise InvalidPattern(f"the path must start with '/' in {text!r}")
    segments = path.split("/")[1:]
    pieces = []
    for index, segment in enumerate(segments):
        if segment == "**":
            if index != len(segments) - 1:
                raise InvalidPattern(f"'**' may only end a pattern, in {text!r}")
            pieces.append("(?:/.*)?")
            break
        if segment == "*":
            pieces.append("/[^/]+")
        elif "*" in segment:
            raise InvalidPattern(f"'*' must be a whole path segment, in {text!r}")
        else:
            pieces.append("/" + re.escape(segment))
    # fullmatch and DOTALL, so a path is matched whole (`$` would also match before a final
    # newline) and `**` is the rest whatever it holds: what scopes.entry_inside reasons about.
    return EndpointPattern(method, path, re.compile("".join(pieces), re.DOTALL))


def validate_patterns(entries: list[str]) -> list[str]:
    """Normalise entries to 'METHOD /path', raising InvalidPattern for the first bad one."""
    return [f"{p.method} {p.path}" for p in map(parse_pattern, entries)]


def is_allowed(entries: list[str] | tuple[str, ...], method: str, path: str) -> bool:
    return any(parse_pattern(entry).matches(method, path) for entry in entries)
