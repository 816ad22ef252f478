"""Database URLs: which backend, what to hand its driver, and never a password in what we print."""

from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from keybrake_addon.ledger.urls import DatabaseUrl, parse_database_url

SECRET = "hunter2-s3cret"


@pytest.mark.parametrize("text, path", [
    ("sqlite:///var/lib/keybrake/ledger.db", "/var/lib/keybrake/ledger.db"),
    ("SQLite:///tmp/x.db", "/tmp/x.db"),
    ("sqlite:///tmp/with%20space.db", "/tmp/with space.db"),
    ("/var/lib/keybrake/ledger.db", "/var/lib/keybrake/ledger.db"),
    ("ledger.db", "ledger.db"),
    ("./data/ledger.db", "data/ledger.db"),
    ("odd:name.db", "odd:name.db"),  # a colon without // is a file name, not a scheme
])
def test_sqlite_forms_give_a_path(text, path):
    url = parse_database_url(text)
    assert url == DatabaseUrl(backend="sqlite", path=Path(path))
    assert url.conninfo is None


@pytest.mark.parametrize("text", [
    f"postgresql://kb:{SECRET}@db.internal:5433/ledger?sslmode=require",
    f"postgres://kb:{SECRET}@db.internal:5433/ledger?sslmode=require",
    f"POSTGRES://kb:{SECRET}@db.internal:5433/ledger?sslmode=require",
])
def test_postgres_schemes_give_a_conninfo_libpq_reads(text):
    url = parse_database_url(text)
    assert url.backend == "postgresql" and url.path is None
    assert url.conninfo.startswith("postgresql://")
    parsed = conninfo_to_dict(url.conninfo)
    assert parsed == {"user": "kb", "password": SECRET, "host": "db.internal", "port": "5433",
                      "dbname": "ledger", "sslmode": "require"}


def test_a_bare_postgres_url_means_libpq_defaults():
    assert conninfo_to_dict(parse_database_url("postgresql://").conninfo) == {}


@pytest.mark.parametrize("text, shown", [
    (f"postgresql://kb:{SECRET}@db:5432/ledger", "postgresql://kb:***@db:5432/ledger"),
    (f"postgres://kb:{SECRET}@db/ledger", "postgresql://kb:***@db/ledger"),
    ("postgresql://kb@db/ledger", "postgresql://kb@db/ledger"),
    ("postgresql://db/ledger?sslmode=require", "postgresql://db/ledger?sslmode=require"),
    (f"postgresql://kb:{SECRET}@h1:5432,h2:5433/ledger", "postgresql://kb:***@h1:5432,h2:5433/ledger"),
    (f"postgresql://db/ledger?user=kb&password={SECRET}&sslmode=require",
     "postgresql://db/ledger?user=kb&password=***&sslmode=require"),
    (f"postgresql://db/ledger?sslpassword={SECRET}", "postgresql://db/ledger?sslpassword=***"),
    (f"postgresql://db/ledger?PASSWORD={SECRET}", "postgresql://db/ledger?PASSWORD=***"),
    # Malformed for libpq, yet exactly what an error message may echo: still hidden.
    (f"postgresql://kb:{SECRET}/x@db/ledger", "postgresql://kb:***@db/ledger"),
    (f"postgresql://kb:{SECRET}@x@db/ledger", "postgresql://kb:***@db/ledger"),
    (f"postgresql://kb:{SECRET}?x@db/ledger", "postgresql://kb:***@db/ledger"),
    ("/var/lib/keybrake/ledger.db", "/var/lib/keybrake/ledger.db"),
])
def test_redacted_hides_every_password(text, shown):
    url = parse_database_url(text)
    assert url.redacted() == shown
    assert SECRET not in repr(url) and SECRET not in str(url)


def test_repr_names_the_redacted_url():
    assert repr(parse_database_url(f"postgresql://kb:{SECRET}@db/ledger")) == "DatabaseUrl('postgresql://kb:***@db/ledger')"


@pytest.mark.parametrize("text", [
    f"mysql://kb:{SECRET}@db/ledger",
    f"postgresql+psycopg://kb:{SECRET}@db/ledger",
    f"http://kb:{SECRET}@db/ledger",
    "sqlite:relative.db",
    f"postgres:kb:{SECRET}@db",
])
def test_unknown_schemes_are_refused_naming_the_accepted_forms(text):
    with pytest.raises(ValueError) as refused:
        parse_database_url(text)
    message = str(refused.value)
    assert "sqlite:///abs/path.db" in message and "postgresql://" in message
    assert SECRET not in message


@pytest.mark.parametrize("text, complaint", [
    ("", "empty"),
    ("   ", "empty"),
    ("sqlite://relative.db", "absolute path"),
    ("sqlite:///", "absolute path"),
    ("sqlite:///tmp/x.db?mode=ro", "take no"),
    (f"host=db dbname=ledger password={SECRET}", "key=value"),
])
def test_malformed_urls_are_refused_clearly(text, complaint):
    with pytest.raises(ValueError, match=complaint) as refused:
        parse_database_url(text)
    assert SECRET not in str(refused.value)
