"""The Keybrake home: database, master key and CA of one installation.

Chosen by `keybrake --home DIR`, else KEYBRAKE_HOME, else ~/.keybrake.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from .vault.crypto import MasterKeyError, decode_master_key, encode_master_key, new_master_key

DEFAULT_HOME = "~/.keybrake"
MASTER_KEY_ENV = "KEYBRAKE_MASTER_KEY"


@dataclass(frozen=True)
class KeybrakeHome:
    root: Path

    @classmethod
    def resolve(cls, explicit: str | os.PathLike | None = None) -> "KeybrakeHome":
        chosen = explicit or os.environ.get("KEYBRAKE_HOME") or DEFAULT_HOME
        return cls(Path(chosen).expanduser().resolve())

    @property
    def database(self) -> Path:
        return self.root / "keybrake.db"

    @property
    def master_key_file(self) -> Path:
        return self.root / "master.key"

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def ca_cert(self) -> Path:
        return self.certs / "keybrake-ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.certs / "keybrake-ca-key.pem"

    @property
    def mitmproxy_confdir(self) -> Path:
        """mitmproxy looks for `mitmproxy-ca.pem` here; it links to our CA key file."""
        return self.certs / "mitmproxy"

    @property
    def pricing_file(self) -> Path:
        return self.root / "pricing.json"

    def is_initialised(self) -> bool:
        return self.database.exists() and self.ca_cert.exists()

    def load_master_key(self) -> bytes:
        from_env = os.environ.get(MASTER_KEY_ENV)
        if from_env:
            return decode_master_key(from_env, source=MASTER_KEY_ENV)
        if not self.master_key_file.exists():
            raise MasterKeyError(
                f"no master key: {self.master_key_file} does not exist and {MASTER_KEY_ENV} is not set "
                "(run `keybrake init`)"
            )
        return decode_master_key(self.master_key_file.read_text(), source=str(self.master_key_file))

    def ensure_master_key(self) -> bool:
        """Create the master key file unless one exists or comes from the environment."""
        if os.environ.get(MASTER_KEY_ENV) or self.master_key_file.exists():
            return False
        write_private_file(self.master_key_file, encode_master_key(new_master_key()) + "\n")
        return True


def write_private_file(path: Path, content: str | bytes) -> None:
    """Create a file readable by its owner only, with no window where it is wider open."""
    data = content.encode() if isinstance(content, str) else content
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
