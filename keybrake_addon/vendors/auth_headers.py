"""Reading and writing the `Authorization` header, for the vendor modules."""

import base64
from collections.abc import Mapping


def bearer_token(headers: Mapping[str, str]) -> str | None:
    scheme, _, value = headers.get("authorization", "").strip().partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


def basic_credentials(headers: Mapping[str, str]) -> tuple[str, str] | None:
    """(user, password) of HTTP Basic auth, or None when absent or garbled."""
    scheme, _, value = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return (user, password) if sep else (user, "")


def bearer(secret: str) -> str:
    return f"Bearer {secret}"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
