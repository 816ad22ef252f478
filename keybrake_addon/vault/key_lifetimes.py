"""How long vault keys live: the installation's default and maximum TTL.

Kept in the ledger's `meta` table, so every replica sharing one database issues keys under the
same rules. A key nobody gave a lifetime expires after the default; a longer lifetime than the
maximum is refused, so a forgotten key cannot stay usable for years.
"""

from dataclasses import dataclass
from datetime import timedelta

from ..durations import InvalidDuration, parse_duration
from ..ledger.base import Ledger

FACTORY_DEFAULT_TTL = "24h"
FACTORY_MAX_TTL = "30d"

# The settings' names, as `keybrake settings` takes them, and their rows in the meta table.
DEFAULT_KEY_TTL = "default-key-ttl"
MAX_KEY_TTL = "max-key-ttl"
SETTINGS = {DEFAULT_KEY_TTL: "key_ttl_default", MAX_KEY_TTL: "key_ttl_max"}
FACTORY = {DEFAULT_KEY_TTL: FACTORY_DEFAULT_TTL, MAX_KEY_TTL: FACTORY_MAX_TTL}


class InvalidSetting(ValueError):
    """A setting's value is not acceptable; the message says why."""


@dataclass(frozen=True)
class KeyLifetimes:
    default_ttl: str  # as the operator wrote it: "24h"
    max_ttl: str
    default_is_set: bool = False  # False: the factory value
    max_is_set: bool = False

    @property
    def default(self) -> timedelta:
        return parse_duration(self.default_ttl)

    @property
    def maximum(self) -> timedelta:
        return parse_duration(self.max_ttl)


def read_lifetimes(ledger: Ledger) -> KeyLifetimes:
    """The installation's settings. A stored value that no longer parses is an error, never ignored."""
    stored = {name: ledger.get_meta(row) for name, row in SETTINGS.items()}
    lifetimes = KeyLifetimes(stored[DEFAULT_KEY_TTL] or FACTORY_DEFAULT_TTL, stored[MAX_KEY_TTL] or FACTORY_MAX_TTL,
                             stored[DEFAULT_KEY_TTL] is not None, stored[MAX_KEY_TTL] is not None)
    for name, text in ((DEFAULT_KEY_TTL, lifetimes.default_ttl), (MAX_KEY_TTL, lifetimes.max_ttl)):
        try:
            parse_duration(text)
        except InvalidDuration as failure:
            raise InvalidSetting(f"the stored {name} is unreadable ({failure}); "
                                 f"set it again with `keybrake settings set {name} ...`") from None
    return lifetimes


def set_lifetime(ledger: Ledger, name: str, text: str) -> KeyLifetimes:
    """Set one of the two TTLs, keeping the default no longer than the maximum."""
    if name not in SETTINGS:
        raise InvalidSetting(f"unknown setting {name!r}; choose one of {', '.join(SETTINGS)}")
    try:
        parse_duration(text)
    except InvalidDuration as failure:
        raise InvalidSetting(f"{name}: {failure}") from None
    text = text.strip()
    current = read_lifetimes(ledger)
    default_ttl, max_ttl = (text, current.max_ttl) if name == DEFAULT_KEY_TTL else (current.default_ttl, text)
    if parse_duration(default_ttl) > parse_duration(max_ttl):
        if name == DEFAULT_KEY_TTL:
            raise InvalidSetting(f"{name}: {text} is longer than max-key-ttl ({max_ttl}); "
                                 f"raise max-key-ttl first")
        raise InvalidSetting(f"{name}: {text} is shorter than default-key-ttl ({default_ttl}); "
                             f"lower default-key-ttl first")
    ledger.set_meta(SETTINGS[name], text)
    return read_lifetimes(ledger)
