"""Which ledger database to open, from the text an operator gives (flag, env var or config).

Pure: no I/O, no driver imports, so the CLI can parse and print a URL before choosing a backend.
Accepted forms:
  sqlite:///abs/path.db                  an SQLite file, absolute path
  /some/path.db, ledger.db               a plain filesystem path: an SQLite file
  postgresql://user:pass@host:5432/db    PostgreSQL; also postgres://, and anything libpq takes
                                         after the scheme (several hosts, ?sslmode=..., ...)
"""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote

ACCEPTED_FORMS = (
    "sqlite:///abs/path.db, a plain filesystem path (an SQLite file), "
    "or postgresql://user:password@host:port/dbname (postgres:// works too)"
)
_POSTGRES_SCHEMES = ("postgresql", "postgres")
_KNOWN_SCHEMES = ("sqlite", *_POSTGRES_SCHEMES)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(//)?")
# libpq's key=value form ("host=db dbname=kb") is not a URL; taken as a path it would silently
# open a fresh, empty SQLite file named after it.
_LIBPQ_KEYWORDS = re.compile(r"^\s*[A-Za-z_]+\s*=")
# Query parameters libpq reads secrets from.
_SECRET_PARAMS = re.compile(r"([?&])((?:ssl)?password)=[^&#]*", re.IGNORECASE)
HIDDEN = "***"


@dataclass(frozen=True)
class DatabaseUrl:
    backend: Literal["sqlite", "postgresql"]
    path: Path | None = None  # sqlite only
    conninfo: str | None = None  # postgresql only: hand it to psycopg.connect as it is

    def redacted(self) -> str:
        """The URL with any password hidden: the only form fit for logs, banners and errors."""
        if self.backend == "sqlite":
            return str(self.path)
        return _redact_postgres_url(self.conninfo)

    def __repr__(self) -> str:
        # The default repr would print conninfo, password included, in any traceback or log.
        return f"DatabaseUrl({self.redacted()!r})"


def parse_database_url(text: str) -> DatabaseUrl:
    """Raises ValueError, naming the accepted forms, for anything else. Never echoes a password."""
    if not text or not text.strip():
        raise ValueError(f"empty database URL; use {ACCEPTED_FORMS}")
    match = _SCHEME.match(text)
    if match is None or (match.group(2) is None and match.group(1).lower() not in _KNOWN_SCHEMES):
        return _plain_path(text)
    scheme = match.group(1).lower()
    if match.group(2) is None or scheme not in _KNOWN_SCHEMES:
        # Only the scheme: the rest may hold a password.
        raise ValueError(f"unsupported database URL scheme {scheme + ':'!r}; use {ACCEPTED_FORMS}")
    rest = text[match.end():]
    if scheme == "sqlite":
        return _sqlite_url(rest)
    return DatabaseUrl(backend="postgresql", conninfo="postgresql://" + rest)


def _plain_path(text: str) -> DatabaseUrl:
    if _LIBPQ_KEYWORDS.match(text):
        raise ValueError(f"database URL looks like libpq key=value settings, which are not accepted; use {ACCEPTED_FORMS}")
    return DatabaseUrl(backend="sqlite", path=Path(text))


def _sqlite_url(rest: str) -> DatabaseUrl:
    # rest is what follows "sqlite://": an empty host, then the absolute path.
    if not rest.startswith("/") or rest == "/":
        raise ValueError(f"sqlite URLs need an absolute path, as in sqlite:///abs/path.db (got sqlite://{rest})")
    if "?" in rest or "#" in rest:
        raise ValueError("sqlite URLs take no ?options or #fragment; give a plain path if the file name has '?' or '#'")
    return DatabaseUrl(backend="sqlite", path=Path(unquote(rest)))


def _redact_postgres_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    rest = _SECRET_PARAMS.sub(lambda m: f"{m.group(1)}{m.group(2)}={HIDDEN}", rest)
    # The last '@' rather than the authority's end: a password with an unescaped '/', '?' or '@'
    # is malformed for libpq, yet may well be printed in the error that says so. Hiding too much
    # beats showing a secret.
    userinfo, at, after = rest.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        rest = f"{user}:{HIDDEN}@{after}" if colon else f"{user}@{after}"
    return f"{scheme}://{rest}"
