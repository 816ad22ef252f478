"""One Keybrake installation: its home on disk, ledger and master key, opened together."""

from dataclasses import dataclass

from .home import KeybrakeHome
from .ledger.sqlite import BUSY_TIMEOUT_S, SqliteLedger
from .vault.crypto import MasterKeyError, master_key_check
from .vault.secrets import SecretVault

MASTER_KEY_CHECK = "master_key_check"


@dataclass
class Installation:
    home: KeybrakeHome
    ledger: SqliteLedger
    master_key: bytes

    @property
    def vault(self) -> SecretVault:
        return SecretVault(self.ledger, self.master_key)

    def close(self) -> None:
        self.ledger.close()


@dataclass(frozen=True)
class InitReport:
    created_home: bool
    created_master_key: bool
    created_ca: bool


def initialise(home: KeybrakeHome) -> InitReport:
    """Create whatever part of the home is missing. Safe to run again."""
    created_home = not home.root.exists()
    home.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    created_key = home.ensure_master_key()
    from .ca import ensure_ca  # mitmproxy's certificate code: only init pays for importing it

    created_ca = ensure_ca(home)
    from .worker_env import ca_bundle

    ca_bundle(home)  # written now, so a proxy can later start on a read-only home
    installation = open_installation(home)
    installation.close()
    return InitReport(created_home, created_key, created_ca)


def open_installation(home: KeybrakeHome, *, busy_timeout_s: float = BUSY_TIMEOUT_S,
                      background_checkpoints: bool = False) -> Installation:
    if not home.root.exists():
        raise FileNotFoundError(f"no Keybrake home at {home.root}; run `keybrake init` first")
    master_key = home.load_master_key()
    ledger = SqliteLedger(home.database, busy_timeout_s=busy_timeout_s,
                          background_checkpoints=background_checkpoints)
    expected = ledger.get_meta(MASTER_KEY_CHECK)
    check = master_key_check(master_key)
    if expected is None:
        ledger.set_meta(MASTER_KEY_CHECK, check)
    elif expected != check:
        ledger.close()
        raise MasterKeyError(
            f"the master key does not match the one that wrote {home.database}; "
            "check KEYBRAKE_MASTER_KEY or the home's master.key"
        )
    return Installation(home, ledger, master_key)
