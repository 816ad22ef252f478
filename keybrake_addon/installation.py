"""One Keybrake installation: its home on disk, ledger and master key, opened together."""

from dataclasses import dataclass

from .home import KeybrakeHome
from .ledger.executor import AsyncLedger
from .ledger.opening import database_of, open_ledger
from .ledger.store import SqlLedger
from .ledger.urls import DatabaseUrl
from .vault.crypto import MasterKeyError, master_key_check
from .vault.secrets import SecretVault

MASTER_KEY_CHECK = "master_key_check"


@dataclass
class Installation:
    home: KeybrakeHome
    ledger: SqlLedger
    master_key: bytes
    database: DatabaseUrl
    busy_timeout_s: float | None = None

    @property
    def vault(self) -> SecretVault:
        return SecretVault(self.ledger, self.master_key)

    def async_ledger(self) -> AsyncLedger:
        """The gate's ledger: its own connections, so the gate's batches never queue behind a report."""
        store = open_ledger(self.database, busy_timeout_s=self.busy_timeout_s, background_checkpoints=True)
        inline = None
        if self.database.backend == "sqlite":
            try:  # the never-waiting connection for the event loop's fast path
                inline = open_ledger(self.database, busy_timeout_s=0, background_checkpoints=True)
            except BaseException:
                store.close()
                raise
        return AsyncLedger(store, inline=inline)

    def close(self) -> None:
        self.ledger.close()


@dataclass(frozen=True)
class InitReport:
    created_home: bool
    created_master_key: bool
    created_ca: bool


def initialise(home: KeybrakeHome, database: DatabaseUrl | None = None) -> InitReport:
    """Create whatever part of the home is missing. Safe to run again."""
    created_home = not home.root.exists()
    home.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    created_key = home.ensure_master_key()
    from .ca import ensure_ca  # mitmproxy's certificate code: only init pays for importing it

    created_ca = ensure_ca(home)
    from .worker_env import ca_bundle

    ca_bundle(home)  # written now, so a proxy can later start on a read-only home
    installation = open_installation(home, database=database)
    installation.close()
    return InitReport(created_home, created_key, created_ca)


def open_installation(home: KeybrakeHome, *, database: DatabaseUrl | None = None, busy_timeout_s: float | None = None,
                      background_checkpoints: bool = False) -> Installation:
    """The home's master key and the ledger (the home's SQLite file unless `database` names
    another). The master key must be the one that wrote the ledger's secrets."""
    if not home.root.exists():
        raise FileNotFoundError(f"no Keybrake home at {home.root}; run `keybrake init` first")
    master_key = home.load_master_key()
    database = database or database_of(None, home.database)
    ledger = open_ledger(database, busy_timeout_s=busy_timeout_s, background_checkpoints=background_checkpoints)
    try:
        expected = ledger.get_meta(MASTER_KEY_CHECK)
        check = master_key_check(master_key)
        if expected is None:
            ledger.set_meta(MASTER_KEY_CHECK, check)
        elif expected != check:
            raise MasterKeyError(
                f"the master key does not match the one that wrote {database.redacted()}; "
                "check KEYBRAKE_MASTER_KEY or the home's master.key (a replica needs a copy of the home "
                "whose master key wrote this database)")
    except BaseException:
        ledger.close()
        raise
    return Installation(home, ledger, master_key, database, busy_timeout_s)
