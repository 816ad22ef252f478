"""Fixtures every suite may use: a PostgreSQL server for the session, a fresh database per test."""

import time

import pytest

from support.postgres import PostgresUnavailable, fresh_database, provision_server, start_throwaway_server
from support.browser import browser  # noqa: F401 - chromium, one per test module that drives it


@pytest.fixture(scope="session")
def postgres_server():
    """The session's shared server (see tests/support/postgres.py for which). Never stop it: use owned_pg."""
    try:
        server = provision_server()
    except PostgresUnavailable as unavailable:
        # Fail, never skip: a skipped ledger test is a green CI that proved nothing.
        pytest.fail(str(unavailable), pytrace=False)
    yield server
    server.remove()


@pytest.fixture
def pg_url(postgres_server):
    """A URL to a new, empty database of this test's own, dropped afterwards."""
    with fresh_database(postgres_server.url) as url:
        yield url


@pytest.fixture
def owned_pg():
    """A dedicated throwaway cluster (not the shared server) that the test may stop() and start()."""
    try:
        server = start_throwaway_server()
    except PostgresUnavailable as unavailable:
        pytest.fail(str(unavailable), pytrace=False)
    yield server
    server.remove()


# Longer than any one test takes: a test begun this close to 00:00 UTC waits for the new day first.
MIDNIGHT_MARGIN_S = 180.0


def seconds_to_utc_midnight(now: float) -> float:
    return 86400.0 - now % 86400.0


@pytest.fixture(autouse=True)
def clear_of_utc_midnight(request):
    """Daily caps reset at 00:00 UTC (the database's clock). A test that spends against one and
    crosses midnight would see its window reset halfway and fail for no fault of the code, so it
    starts after midnight instead. At most one wait per run; tests of midnight itself fake the clock."""
    left = seconds_to_utc_midnight(time.time())
    if left < MIDNIGHT_MARGIN_S:
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"waiting {left + 1:.0f} s for 00:00 UTC, so that no test crosses the daily reset")
        time.sleep(left + 1.0)
    yield


BACKENDS = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc):
    """A module about money sets `BOTH_BACKENDS = True`: its tests that use the `database_url`
    fixture (the e2e `home` does) then run on each ledger backend."""
    if "ledger_backend" in metafunc.fixturenames:
        both = getattr(metafunc.module, "BOTH_BACKENDS", False)
        metafunc.parametrize("ledger_backend", BACKENDS if both else BACKENDS[:1])


@pytest.fixture
def database_url(request, ledger_backend, monkeypatch) -> str | None:
    """The ledger's URL for the PostgreSQL run (every keybrake process this test starts inherits
    it through KEYBRAKE_DATABASE_URL); None for the home's SQLite file."""
    if ledger_backend == "sqlite":
        return None
    url = request.getfixturevalue("pg_url")
    monkeypatch.setenv("KEYBRAKE_DATABASE_URL", url)
    return url
