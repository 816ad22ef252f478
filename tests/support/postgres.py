"""A PostgreSQL server for the tests, and a fresh database per test.

The server, in this order:
  1. KEYBRAKE_TEST_DATABASE_URL, if set (it must answer);
  2. the local server at postgresql://postgres@127.0.0.1:5432/postgres, if it answers;
  3. a throwaway cluster from Debian's server binaries (/usr/lib/postgresql/*/bin), removed at
     the end of the session.
With none of these the tests fail, naming the package to install: a ledger test that skips
would pass CI on a machine that never ran it.

KEYBRAKE_TEST_FORCE_THROWAWAY_PG=1 skips 1 and 2, so the throwaway path can be tested here too.
"""

import atexit
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from keybrake_addon.ledger.urls import parse_database_url

URL_ENV = "KEYBRAKE_TEST_DATABASE_URL"
FORCE_THROWAWAY_ENV = "KEYBRAKE_TEST_FORCE_THROWAWAY_PG"
BINARIES_ENV = "KEYBRAKE_TEST_PG_BINARIES"  # a glob; lets a test play a machine without them
LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_BINARIES = "/usr/lib/postgresql/*/bin"
INSTALL_HINT = (
    "install PostgreSQL's server binaries: `apt-get install -y postgresql` "
    "(Debian 12: postgresql-15), or point KEYBRAKE_TEST_DATABASE_URL at a server"
)
SERVER_OS_USER = "postgres"  # postgres refuses to run as root
START_ATTEMPTS = 3  # a free port can be taken by someone else before the server binds it
TEST_DATABASE_PREFIX = "kb_test_"


class PostgresUnavailable(RuntimeError):
    pass


def server_answers(url: str, timeout_seconds: int = 2) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=timeout_seconds, autocommit=True) as connection:
            return connection.execute("SELECT 1").fetchone() == (1,)
    except psycopg.Error:
        return False


def with_database(url: str, dbname: str) -> str:
    """The same server URL (user, host, options) naming another database."""
    return urlunsplit(urlsplit(url)._replace(path="/" + dbname))


def find_server_binaries(pattern: str = DEFAULT_BINARIES) -> Path | None:
    """The newest PostgreSQL major version's bin directory that has initdb and pg_ctl."""
    candidates = [Path(found) for found in glob.glob(pattern)]
    usable = [path for path in candidates if (path / "initdb").is_file() and (path / "pg_ctl").is_file()]
    return max(usable, key=_major_version, default=None)


def _major_version(bin_dir: Path) -> tuple[int, str]:
    name = bin_dir.parent.name  # /usr/lib/postgresql/15/bin -> 15
    return (int(name), name) if name.isdigit() else (-1, name)


class ThrowawayCluster:
    """A PostgreSQL cluster of our own in a temporary directory: trust auth, loopback only, no fsync."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="keybrake-pg-"))
        self.data_dir = self.root / "data"
        self.log_path = self.root / "server.log"
        self.port: int | None = None
        self._as_server_user = os.geteuid() == 0
        if self._as_server_user:
            shutil.chown(self.root, user=SERVER_OS_USER, group=SERVER_OS_USER)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def create(self) -> "ThrowawayCluster":
        try:
            # A copy of a data directory initdb made once per process: ~0.2 s instead of ~2 s.
            # cp -a as the server user keeps the owner and the 0700 mode postgres insists on.
            self._run(shutil.which("cp") or "/bin/cp", "-a", _pristine_data_dir(self.bin_dir), self.data_dir)
            self._configure()
            self._start_on_a_free_port()
        except BaseException:
            self.remove()
            raise
        return self

    def start(self) -> None:
        self._run("pg_ctl", "-D", self.data_dir, "-l", self.log_path, "-w", "-t", "60",
                  "-o", f"-p {self.port}", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", self.data_dir, "-m", "fast", "-w", "-t", "60", "stop")

    def is_running(self) -> bool:
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        status = subprocess.run(self._command("pg_ctl", "-D", self.data_dir, "status"),
                                cwd=self.root, capture_output=True, text=True)
        return status.returncode == 0

    def remove(self) -> None:
        """Stops the server if it runs, then deletes every file; safe to call twice."""
        if self.root.exists() and self.is_running():
            # Nothing in it is worth a clean shutdown.
            self._run("pg_ctl", "-D", self.data_dir, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def _configure(self) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            # The socket lives with the cluster: /var/run/postgresql may not exist or be ours.
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
        }
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# keybrake test cluster\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def _start_on_a_free_port(self) -> None:
        for attempt in range(1, START_ATTEMPTS + 1):
            self.port = _free_port()
            try:
                self.start()
                return
            except PostgresUnavailable:
                if attempt == START_ATTEMPTS:
                    raise

    def initdb(self) -> None:
        self._run("initdb", "-D", self.data_dir, "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--locale=C", "--no-sync")

    def _command(self, program: str, *args) -> list[str]:
        # An absolute program (cp) stays as it is: Path / "/bin/cp" is /bin/cp.
        command = [str(self.bin_dir / program), *map(str, args)]
        return ["runuser", "-u", SERVER_OS_USER, "--", *command] if self._as_server_user else command

    def _run(self, program: str, *args) -> None:
        # cwd: the server user may not be allowed into ours (/root, say).
        done = subprocess.run(self._command(program, *args), cwd=self.root, capture_output=True, text=True)
        if done.returncode != 0:
            log = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
            raise PostgresUnavailable(
                f"throwaway PostgreSQL: `{program} {' '.join(map(str, args))}` failed ({done.returncode}):\n"
                f"{done.stdout}{done.stderr}{log}"
            )


_pristine_data_dirs: dict[Path, Path] = {}  # bin dir -> a data dir fresh from initdb, never started


def _pristine_data_dir(bin_dir: Path) -> Path:
    if bin_dir not in _pristine_data_dirs:
        holder = ThrowawayCluster(bin_dir)
        try:
            holder.initdb()
        except BaseException:
            holder.remove()
            raise
        atexit.register(holder.remove)
        _pristine_data_dirs[bin_dir] = holder.data_dir
    return _pristine_data_dirs[bin_dir]


@dataclass
class PostgresServer:
    url: str  # a URL to the server's maintenance database; with_database() names another
    cluster: ThrowawayCluster | None = None

    @property
    def owned(self) -> bool:
        """True for a throwaway cluster of ours: only those may be stopped and started."""
        return self.cluster is not None

    def stop(self) -> None:
        self._owned_cluster().stop()

    def start(self) -> None:
        self._owned_cluster().start()

    def remove(self) -> None:
        if self.cluster is not None:
            self.cluster.remove()

    def _owned_cluster(self) -> ThrowawayCluster:
        if self.cluster is None:
            raise RuntimeError(f"{parse_database_url(self.url).redacted()} is not ours to stop or start; use owned_pg")
        return self.cluster


def start_throwaway_server(binaries_pattern: str | None = None) -> PostgresServer:
    """A new cluster of our own, answering; the caller removes it (PostgresServer.remove)."""
    pattern = binaries_pattern or os.environ.get(BINARIES_ENV) or DEFAULT_BINARIES
    bin_dir = find_server_binaries(pattern)
    if bin_dir is None:
        raise PostgresUnavailable(f"no PostgreSQL server binaries in {pattern} for a throwaway cluster: {INSTALL_HINT}")
    if os.geteuid() == 0 and not _os_user_exists(SERVER_OS_USER):
        raise PostgresUnavailable(f"running as root, and there is no `{SERVER_OS_USER}` user to run PostgreSQL as: {INSTALL_HINT}")
    cluster = ThrowawayCluster(bin_dir).create()
    return PostgresServer(url=cluster.url, cluster=cluster)


def provision_server(environ: Mapping[str, str] = os.environ) -> PostgresServer:
    """The server for this test session, by the order in the module's docstring."""
    forced_throwaway = environ.get(FORCE_THROWAWAY_ENV, "") not in ("", "0")
    given = environ.get(URL_ENV)
    if given and not forced_throwaway:
        if parse_database_url(given).backend != "postgresql":
            raise PostgresUnavailable(f"{URL_ENV} must be a postgresql:// URL, not {parse_database_url(given).redacted()}")
        if not server_answers(given, timeout_seconds=10):
            raise PostgresUnavailable(f"{URL_ENV}={parse_database_url(given).redacted()} does not answer `SELECT 1`")
        return PostgresServer(url=given)
    if not forced_throwaway and server_answers(LOCAL_URL):
        return PostgresServer(url=LOCAL_URL)
    return start_throwaway_server(environ.get(BINARIES_ENV))


@contextmanager
def fresh_database(server_url: str, *, encoding: str | None = None) -> Iterator[str]:
    """A new, empty database on the server, dropped on exit even with connections still open.
    encoding: another server encoding than the cluster's (LATIN1, say), with the C locale."""
    name = TEST_DATABASE_PREFIX + secrets.token_hex(6)
    encoded = f" ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C'" if encoding else ""
    with psycopg.connect(server_url, autocommit=True) as admin:
        # template0: nothing a previous test might have left in template1 comes along.
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0{encoded}')
    try:
        yield with_database(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def refill_from_template(server_url: str, url: str, template: str) -> None:
    """Make the database `url` names, new and not yet connected to, a copy of `template` (which
    nothing may be connected to either): PostgreSQL copies databases only at CREATE DATABASE."""
    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}"')
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _os_user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
