"""Fixtures every suite may use: a PostgreSQL server for the session, a fresh database per test."""

import pytest

from support.postgres import PostgresUnavailable, fresh_database, provision_server, start_throwaway_server


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
