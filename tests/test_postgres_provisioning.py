"""The tests' PostgreSQL: which server a session gets, fresh databases, throwaway clusters."""

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from support.postgres import (
    BINARIES_ENV, FORCE_THROWAWAY_ENV, LOCAL_URL, SERVER_OS_USER, TEST_DATABASE_PREFIX, URL_ENV,
    PostgresServer, PostgresUnavailable, fresh_database, provision_server, server_answers,
    start_throwaway_server,
)

REPO = Path(__file__).resolve().parents[1]
ROOT_MARK = "THROWAWAY_ROOT="


def database_exists(server_url: str, name: str) -> bool:
    with psycopg.connect(server_url, autocommit=True) as connection:
        return connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def test_pg_url_is_a_fresh_empty_database_of_its_own(pg_url, postgres_server):
    with psycopg.connect(pg_url, autocommit=True) as connection:
        name = connection.execute("SELECT current_database()").fetchone()[0]
        tables = connection.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]
        connection.execute("CREATE TABLE proof (n int)")
    assert name.startswith(TEST_DATABASE_PREFIX)
    assert tables == 0
    assert database_exists(postgres_server.url, name)


def test_the_shared_server_follows_the_switches(postgres_server):
    if os.environ.get(FORCE_THROWAWAY_ENV):
        assert postgres_server.owned and postgres_server.url != LOCAL_URL
        assert server_answers(postgres_server.url)
        print(ROOT_MARK + str(postgres_server.cluster.root))  # the parent test checks it is gone afterwards
    elif os.environ.get(URL_ENV):
        assert postgres_server.url == os.environ[URL_ENV] and not postgres_server.owned
    elif server_answers(LOCAL_URL):
        assert postgres_server.url == LOCAL_URL and not postgres_server.owned
    else:
        assert postgres_server.owned


def test_fresh_databases_differ_and_are_dropped_despite_open_connections(postgres_server):
    with fresh_database(postgres_server.url) as first, fresh_database(postgres_server.url) as second:
        assert first != second
        names = [url.rsplit("/", 1)[1] for url in (first, second)]
        lingering = psycopg.connect(first)  # a test that forgot to close must not block the drop
        assert all(database_exists(postgres_server.url, name) for name in names)
    assert not any(database_exists(postgres_server.url, name) for name in names)
    lingering.close()


def test_a_throwaway_server_starts_answers_stops_starts_and_is_removed():
    server = start_throwaway_server()
    try:
        root = server.cluster.root
        assert server.owned and server_answers(server.url)
        assert server.url != LOCAL_URL
        if os.geteuid() == 0:
            assert server.cluster.data_dir.owner() == SERVER_OS_USER
        server.stop()
        assert not server_answers(server.url)
        server.start()
        assert server_answers(server.url)
    finally:
        server.remove()
    assert not root.exists()
    assert not server_answers(server.url)


def test_owned_pg_is_a_dedicated_server_the_test_may_stop(owned_pg, postgres_server):
    assert owned_pg.owned and owned_pg.url != postgres_server.url
    owned_pg.stop()
    assert not server_answers(owned_pg.url)
    owned_pg.start()
    assert server_answers(owned_pg.url)


def test_the_local_server_is_not_ours_to_stop():
    server = PostgresServer(url=LOCAL_URL)
    with pytest.raises(RuntimeError, match="not ours"):
        server.stop()


def test_without_server_binaries_provisioning_names_the_package(tmp_path):
    with pytest.raises(PostgresUnavailable, match=r"apt-get install -y postgresql.*postgresql-15"):
        start_throwaway_server(str(tmp_path / "*" / "bin"))


def run_pytest(selection: str, **env_changes) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (URL_ENV, FORCE_THROWAWAY_ENV, BINARIES_ENV)}
    env |= env_changes
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-s", "-p", "no:cacheprovider", "-k", selection,
         str(REPO / "tests" / "test_postgres_provisioning.py")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )


def test_a_forced_session_runs_on_a_throwaway_cluster_and_removes_it():
    done = run_pytest("shared_server_follows or fresh_empty_database", **{FORCE_THROWAWAY_ENV: "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
    roots = re.findall(re.escape(ROOT_MARK) + r"(\S+)", done.stdout)
    assert len(roots) == 1, done.stdout
    assert not Path(roots[0]).exists()


def test_a_session_without_binaries_fails_rather_than_skips():
    done = run_pytest("fresh_empty_database", **{FORCE_THROWAWAY_ENV: "1", BINARIES_ENV: "/nonexistent/*/bin"})
    assert done.returncode != 0
    assert "apt-get install -y postgresql" in done.stdout
    assert "skipped" not in done.stdout and "1 error" in done.stdout


@pytest.mark.parametrize("given, complaint", [
    ("/var/lib/keybrake/ledger.db", "must be a postgresql:// URL"),
    ("postgresql://kb:hunter2@127.0.0.1:1/nowhere", r"postgresql://kb:\*\*\*@127.0.0.1:1/nowhere does not answer"),
])
def test_a_given_url_must_be_a_postgres_server_that_answers(given, complaint):
    with pytest.raises(PostgresUnavailable, match=complaint) as refused:
        provision_server({URL_ENV: given})
    assert "hunter2" not in str(refused.value)


def test_a_given_url_that_answers_is_used_as_it_is(postgres_server):
    server = provision_server({URL_ENV: postgres_server.url})
    assert server.url == postgres_server.url and not server.owned
