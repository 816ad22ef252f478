"""Which code a benchmark or soak result belongs to (shared by bench.py and soak.py)."""

import hashlib
from pathlib import Path


def package_fingerprint() -> str:
    """sha256 over the package's Python sources, shortened: equal code, equal fingerprint."""
    import keybrake_addon

    root = Path(keybrake_addon.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]
