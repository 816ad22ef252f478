"""Scoped issuers: the ceilings an admin token puts on the vault keys it mints. Pure.

An admin token without a scope is unrestricted: it mints any key and sees every key, as every
token made before scopes existed still does. A scoped token mints only keys that lie inside its
ceilings, and sees, lists, revokes and replays only the keys it minted itself.

Each ceiling is checked against the key as issuance validated it (allowlist normalised, the
installation's default TTL filled in), never against the raw request, so what is checked is
what the gate will enforce. The stored form is a JSON object holding only the ceilings set;
a name this code does not know (a ceiling from a newer release, say `budget`) makes the scope
unreadable, and an unreadable scope mints nothing: it fails closed.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime

from ..durations import InvalidDuration, parse_duration
from ..ledger.base import KeyRecord, KeySpec
from ..money import format_usd
from ..paths import is_ambiguous
from ..text import has_control_characters
from ..vendors import VENDORS
from .allowlist import InvalidPattern, parse_pattern, validate_patterns


class InvalidScope(ValueError):
    """A scope that cannot be made or read; `field` names the ceiling."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class OverCeiling(ValueError):
    """A key request over one of the token's ceilings; `field` names the key request's field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


@dataclass(frozen=True)
class Scope:
    vendors: tuple[str, ...] = ()  # empty: any vendor
    secret: str | None = None  # the one stored secret name its keys may use
    allow: tuple[str, ...] = ()  # each key allowlist entry must lie inside one of these; empty: any
    max_daily_cap_micros: int | None = None
    max_total_cap_micros: int | None = None
    max_calls: int | None = None
    max_ttl: str | None = None  # a duration, as `parse_duration` reads it
    may_mint_uncapped: bool = False  # a key with neither a daily nor a total USD cap
    may_mint_allow_all: bool = False  # a key without an allowlist
    may_mint_unpriced: bool = False  # a key that forwards calls Keybrake cannot price
    budget: str | None = None  # its keys spend from this budget or one under it

    def has_ceilings(self) -> bool:
        return any(_is_set(getattr(self, f.name)) for f in fields(self) if not f.name.startswith("may_"))


def _is_set(value) -> bool:
    """Whether a scope field says something. A 0 ceiling does (`0 in (None, False)` is true in Python)."""
    return value is not None and value is not False and value != ()


@dataclass(frozen=True)
class Issuer:
    """Who is asking the vault API: an admin token, and its scope (None: unrestricted)."""

    token_id: str
    scope: Scope | None
    problem: str | None = None  # the stored scope is unreadable: refuse everything

    @property
    def unrestricted(self) -> bool:
        return self.scope is None and self.problem is None

    @property
    def own_keys_only(self) -> str | None:
        """The token whose keys alone this issuer may see; None: every key."""
        return None if self.unrestricted else self.token_id

    def sees(self, record: KeyRecord) -> bool:
        return self.unrestricted or record.spec.minted_by == self.token_id


# --- making, storing and reading a scope ------------------------------------------------------

def make_scope(*, vendors=(), secret=None, allow=(), max_daily_cap_micros=None, max_total_cap_micros=None,
               max_calls=None, max_ttl=None, may_mint_uncapped=False, may_mint_allow_all=False,
               may_mint_unpriced=False, budget=None) -> Scope | None:
    """A checked scope from the ceilings asked for; None when none is given (unrestricted).

    Raises InvalidScope naming the ceiling: contradictions are refused here, where the
    operator can fix them, not discovered at the first issuance.
    """
    for vendor in vendors:
        if vendor not in VENDORS:
            raise InvalidScope("vendor", f"unknown vendor {vendor!r}; choose from {', '.join(sorted(VENDORS))}")
    if secret is not None and (not secret or has_control_characters(secret)):
        raise InvalidScope("secret", "a secret name, without control characters")
    if budget is not None and (not budget or has_control_characters(budget)):
        raise InvalidScope("budget", "a budget name, without control characters")
    try:
        allow = tuple(validate_patterns(list(allow)))
    except InvalidPattern as failure:
        raise InvalidScope("allow", str(failure)) from None
    for entry in allow:
        if is_ambiguous(parse_pattern(entry).path):
            raise InvalidScope("allow", f"{entry!r} has dot segments, empty segments or escaped separators; "
                                        "the gate refuses such paths, so a ceiling must not name them")
    if max_ttl is not None:
        try:
            parse_duration(max_ttl)
        except InvalidDuration as failure:
            raise InvalidScope("max_ttl", str(failure)) from None
        max_ttl = max_ttl.strip()
    for name, value in (("max_daily_usd_cap", max_daily_cap_micros), ("max_total_usd_cap", max_total_cap_micros),
                        ("max_calls", max_calls)):
        if value is not None and value < 0:
            raise InvalidScope(name, "must not be negative")
    scope = Scope(tuple(dict.fromkeys(vendors)), secret, allow, max_daily_cap_micros, max_total_cap_micros,
                  max_calls, max_ttl, may_mint_uncapped, may_mint_allow_all, may_mint_unpriced, budget)
    if may_mint_uncapped and (max_daily_cap_micros is not None or max_total_cap_micros is not None):
        raise InvalidScope("may_mint_uncapped", "contradicts the USD cap ceiling given: an uncapped key is over it")
    if may_mint_allow_all and allow:
        raise InvalidScope("may_mint_allow_all", "contradicts --allow: an allow-all key is outside any allowlist")
    if not scope.has_ceilings():
        if may_mint_uncapped or may_mint_allow_all or may_mint_unpriced:
            raise InvalidScope("may_mint", "the --may-mint-* flags relax ceilings, and none is given: a token "
                                           "without ceilings is unrestricted already")
        return None
    return scope


def scope_text(scope: Scope | None) -> str | None:
    """The stored form: the ceilings set, as JSON; None for an unrestricted token."""
    if scope is None:
        return None
    stored = {f.name: getattr(scope, f.name) for f in fields(scope) if _is_set(getattr(scope, f.name))}
    return json.dumps({name: list(value) if isinstance(value, tuple) else value for name, value in stored.items()},
                      sort_keys=True)


# What each stored name holds; the names are Scope's fields.
_KINDS = {"vendors": list, "secret": str, "allow": list, "max_daily_cap_micros": int, "max_total_cap_micros": int,
          "max_calls": int, "max_ttl": str, "may_mint_uncapped": bool, "may_mint_allow_all": bool,
          "may_mint_unpriced": bool, "budget": str}
assert set(_KINDS) == {f.name for f in fields(Scope)}


def read_scope(text: str | None) -> Scope | None:
    """The scope stored as `text`. Raises InvalidScope for anything but what `scope_text` writes."""
    if text is None:
        return None
    try:
        stored = json.loads(text)
    except ValueError:
        raise InvalidScope("scope", "the stored scope is not JSON") from None
    if not isinstance(stored, dict):
        raise InvalidScope("scope", "the stored scope is not a JSON object")
    values = {}
    for name, value in stored.items():
        if name not in _KINDS:
            raise InvalidScope(name, f"a ceiling this Keybrake does not know ({name!r}): "
                                     "use the release that created the token")
        kind = _KINDS[name]
        if kind is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = tuple(value)
        elif not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 0)):
            raise InvalidScope(name, f"the stored value {value!r} is not what a scope holds")
        values[name] = value
    return Scope(**values)


def scope_document(scope: Scope | None) -> dict | None:
    """How `admin-token list --json` shows a scope: every ceiling, dollars as decimal strings."""
    if scope is None:
        return None
    return {
        "vendors": list(scope.vendors), "secret": scope.secret, "allow": list(scope.allow),
        "max_daily_usd_cap": _usd(scope.max_daily_cap_micros), "max_total_usd_cap": _usd(scope.max_total_cap_micros),
        "max_calls": scope.max_calls, "max_ttl": scope.max_ttl, "may_mint_uncapped": scope.may_mint_uncapped,
        "may_mint_allow_all": scope.may_mint_allow_all, "may_mint_unpriced": scope.may_mint_unpriced,
        "budget": scope.budget,
    }


def describe_scope(scope: Scope | None) -> str:
    """One line for a table: `unrestricted`, or the ceilings set."""
    if scope is None:
        return "unrestricted"
    parts = []
    if scope.vendors:
        parts.append("vendor=" + ",".join(scope.vendors))
    if scope.secret is not None:
        parts.append(f"secret={scope.secret}")
    if scope.budget is not None:
        parts.append(f"budget={scope.budget}")
    if scope.allow:
        parts.append("allow=" + ",".join(scope.allow))
    for label, micros in (("daily", scope.max_daily_cap_micros), ("total", scope.max_total_cap_micros)):
        if micros is not None:
            parts.append(f"{label}<=${format_usd(micros)}")
    if scope.max_calls is not None:
        parts.append(f"calls<={scope.max_calls}")
    if scope.max_ttl is not None:
        parts.append(f"ttl<={scope.max_ttl}")
    relaxed = [name for name, on in (("uncapped", scope.may_mint_uncapped), ("allow-all", scope.may_mint_allow_all),
                                     ("unpriced", scope.may_mint_unpriced)) if on]
    if relaxed:
        parts.append("may-mint=" + ",".join(relaxed))
    return " ".join(parts)


def _usd(micros: int | None) -> str | None:
    return None if micros is None else format_usd(micros)


# --- the ceilings, checked against one validated key ------------------------------------------

def check_ceilings(scope: Scope, spec: KeySpec, *, now: datetime, default_ttl: str | None = None,
                   budget_lineage: Sequence[str] = (), budget_capped: bool = False) -> None:
    """Raise OverCeiling, naming the key request's field, for the first ceiling `spec` is over.

    `default_ttl` is the installation's default when the request gave no lifetime (the key got it).
    `budget_lineage` is the key's budget and its ancestors, nearest first; `budget_capped` whether
    one of them has a dollar cap (then the key is capped, through it).
    """
    check_source(scope, spec.vendor, spec.secret_name)
    if scope.budget is not None and scope.budget not in budget_lineage:
        raise OverCeiling("budget", f"this admin token mints keys into the budget {scope.budget!r} or one under it "
                                    f"only; give budget: {scope.budget!r} (or a child of it)")
    _check_endpoints(scope, spec)
    _check_money(scope, spec, budget_capped)
    if scope.max_calls is not None and (spec.max_calls is None or spec.max_calls > scope.max_calls):
        raise OverCeiling("max_calls", f"this admin token mints keys of at most {scope.max_calls} calls; "
                                       f"give max_calls <= {scope.max_calls}")
    if scope.max_ttl is not None:
        longest = parse_duration(scope.max_ttl)
        if spec.expires_at is None or spec.expires_at - now > longest:
            asked = f"the installation's default TTL ({default_ttl})" if default_ttl else "the lifetime asked"
            raise OverCeiling("expires_in", f"this admin token mints keys that live at most {scope.max_ttl}, and "
                                            f"{asked} is longer; give expires_in <= {scope.max_ttl}")


def check_source(scope: Scope, vendor: str, secret_name: str) -> None:
    """The vendor and secret ceilings alone: checkable on the raw request, before anything is looked up."""
    if scope.vendors and vendor not in scope.vendors:
        raise OverCeiling("vendor", f"this admin token mints keys for {', '.join(scope.vendors)} only, not {vendor}")
    if scope.secret is not None and secret_name != scope.secret:
        raise OverCeiling("secret", f"this admin token mints keys for the secret {scope.secret!r} only, "
                                    f"not {secret_name!r}")


def _check_endpoints(scope: Scope, spec: KeySpec) -> None:
    if spec.allow_all:
        if scope.allow:
            raise OverCeiling("allow_all", "this admin token mints keys inside its allowlist "
                                           f"({', '.join(scope.allow)}); an allow-all key is outside it")
        if not scope.may_mint_allow_all:
            raise OverCeiling("allow_all", "this admin token may not mint allow-all keys "
                                           "(it was not created with --may-mint-allow-all); list the endpoints")
        return
    for entry in spec.allowlist:
        if is_ambiguous(parse_pattern(entry).path):
            raise OverCeiling("allowed_endpoints", f"{entry!r} has dot segments, empty segments or escaped "
                                                   "separators, which a scoped token may not put in a key")
        if scope.allow and not any(entry_inside(entry, ceiling) for ceiling in scope.allow):
            raise OverCeiling("allowed_endpoints", f"{entry!r} is not inside this admin token's allowlist "
                                                   f"({', '.join(scope.allow)})")


def _check_money(scope: Scope, spec: KeySpec, budget_capped: bool) -> None:
    daily, total = spec.daily_cap_micros, spec.total_cap_micros
    if daily is None and total is None and not budget_capped and not scope.may_mint_uncapped:
        raise OverCeiling("no_cap", "this admin token may not mint a key without a USD cap "
                                    "(it was not created with --may-mint-uncapped)")
    if scope.max_daily_cap_micros is not None:
        # The most the key can spend in one UTC day: its daily cap, or its total cap when lower.
        caps = [cap for cap in (daily, total) if cap is not None]
        if not caps or min(caps) > scope.max_daily_cap_micros:
            raise OverCeiling("daily_usd_cap", f"this admin token mints keys that spend at most "
                                               f"${format_usd(scope.max_daily_cap_micros)} a day; give "
                                               f"daily_usd_cap <= {format_usd(scope.max_daily_cap_micros)}")
    if scope.max_total_cap_micros is not None and (total is None or total > scope.max_total_cap_micros):
        raise OverCeiling("total_usd_cap", f"this admin token mints keys with a total USD cap of at most "
                                           f"${format_usd(scope.max_total_cap_micros)}; give total_usd_cap <= "
                                           f"{format_usd(scope.max_total_cap_micros)}")
    if spec.allow_unpriced and not scope.may_mint_unpriced:
        raise OverCeiling("allow_unpriced", "this admin token may not mint keys that forward calls Keybrake "
                                            "cannot price (it was not created with --may-mint-unpriced): those "
                                            "are counted only after the vendor answered, past any cap")


# --- allowlist containment --------------------------------------------------------------------

def entry_inside(entry: str, ceiling: str) -> bool:
    """Whether every call `entry` allows, `ceiling` allows too (both `METHOD /path` patterns).

    Sound, and exact for one ceiling: paths split on `/` into segments, `*` is one non-empty
    segment, a final `**` any number of further segments (none included). A key entry must lie
    inside one ceiling entry; an entry covered only by several together is refused, which errs
    on the safe side.
    """
    key, limit = parse_pattern(entry), parse_pattern(ceiling)
    if limit.method != "*" and key.method != limit.method:
        return False  # a `*` key entry matches any method, so only a `*` ceiling holds it
    (key_segments, key_open), (limit_segments, limit_open) = _segments(key.path), _segments(limit.path)
    if limit_open:
        if len(key_segments) < len(limit_segments):
            return False  # the key allows a path shorter than any the ceiling allows
    elif key_open or len(key_segments) != len(limit_segments):
        return False
    return all(_segment_inside(k, c) for k, c in zip(key_segments, limit_segments))


def _segments(path: str) -> tuple[list[str], bool]:
    """A pattern's path as its segments before a final `**`, and whether it ends with one."""
    segments = path.split("/")[1:]
    if segments and segments[-1] == "**":
        return segments[:-1], True
    return segments, False


def _segment_inside(key: str, ceiling: str) -> bool:
    if ceiling == "*":
        return key != ""  # `*` is one non-empty segment (a key's `*` included); an empty one is not in it
    return key == ceiling  # literal: the same text, case and all; a key's `*` is never inside a literal
