"""What the global options chose. Light on purpose: `keybrake --help` and every command import it."""

from dataclasses import dataclass

from ..home import KeybrakeHome


@dataclass(frozen=True)
class Target:
    """The home, and the ledger's URL if not the home's SQLite file."""

    home: KeybrakeHome
    database_url: str | None = None
