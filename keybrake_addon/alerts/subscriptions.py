"""Alert subscriptions: what `keybrake alerts add` and POST /vault/alerts accept, and their secret.

A subscription's signing secret (`whsec_...`, Standard Webhooks' form) is shown once, when it is
made; the ledger keeps it sealed under the master key like a vendor secret (AES-256-GCM, the
subscription's id as associated data), and the deliverer opens it to sign each attempt.

The receiver's URL is sealed the same way: a Slack webhook's URL is itself the credential. The
ledger keeps in the clear only what lists show (`shown_url`).
"""

import base64
import ipaddress
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..egress_policy import non_public_reason, normalise_host
from ..ledger import alert_store
from ..ledger.alert_events import DEFAULT_THRESHOLDS, KINDS
from ..ledger.alert_store import Subscription
from ..policy import iso
from ..text import has_control_characters
from ..vault.crypto import Sealed, seal, unseal
from ..vendors import VENDORS

FORMATS = ("standard", "slack")
MAX_URL_CHARS = 2048
MAX_LABEL_PREFIX_CHARS = 200
SECRET_BYTES = 32
SEALED_AS = "alert-subscription"  # the "vendor" half of the sealing's associated data
SEALED_URL_AS = "alert-subscription-url"


class InvalidSubscription(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class SubscriptionRequest:
    url: str
    events: tuple[str, ...] = KINDS
    thresholds: tuple[int, ...] = DEFAULT_THRESHOLDS
    label_prefix: str | None = None
    vendor: str | None = None
    format: str = "standard"
    allow_private: bool = False


def parse_request(url: str, *, events: Iterable[str] | None = None, thresholds: Iterable | None = None,
                  label_prefix: str | None = None, vendor: str | None = None, fmt: str = "standard",
                  allow_private: bool = False) -> SubscriptionRequest:
    """Check every field; InvalidSubscription names the first one that is wrong."""
    check_url(url, allow_private)
    chosen = tuple(dict.fromkeys(events)) if events else KINDS
    unknown = [e for e in chosen if e not in KINDS]
    if unknown or not chosen:
        raise InvalidSubscription("events", f"unknown event {str(unknown[0])[:40]!r}: choose from {', '.join(KINDS)}"
                                  if unknown else "name at least one event")
    percents = _thresholds(thresholds)
    if label_prefix is not None and (not label_prefix or len(label_prefix) > MAX_LABEL_PREFIX_CHARS
                                     or has_control_characters(label_prefix)):
        raise InvalidSubscription("label_prefix", f"a label prefix is 1 to {MAX_LABEL_PREFIX_CHARS} printable "
                                                  "characters")
    if vendor is not None and vendor not in VENDORS:
        raise InvalidSubscription("vendor", f"vendor is one of {', '.join(sorted(VENDORS))}")
    if fmt not in FORMATS:
        raise InvalidSubscription("format", f"format is one of {', '.join(FORMATS)}")
    return SubscriptionRequest(url, chosen, percents, label_prefix, vendor, fmt, bool(allow_private))


def _thresholds(values: Iterable | None) -> tuple[int, ...]:
    if values is None:
        return DEFAULT_THRESHOLDS
    percents = []
    for value in values:
        text = str(value).strip().removesuffix("%")
        if isinstance(value, bool) or not text.isdigit() or not 1 <= int(text) <= 100:
            raise InvalidSubscription("thresholds", f"a threshold is a whole percent from 1 to 100, got "
                                                    f"{str(value)[:20]!r}")
        percents.append(int(text))
    if not percents:
        raise InvalidSubscription("thresholds", "give at least one threshold, such as 50,80,100")
    return tuple(sorted(set(percents)))


def check_url(url: str, allow_private: bool) -> None:
    """An http(s) URL without credentials in it. A private address given literally is refused now
    (without --allow-private); a name is resolved and checked at every delivery."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS or has_control_characters(url):
        raise InvalidSubscription("url", f"the URL is 1 to {MAX_URL_CHARS} printable characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidSubscription("url", "the URL is malformed (check its port)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidSubscription("url", "expected an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise InvalidSubscription("url", "put no user or password in the URL: receivers check the signature instead")
    if port == 0:
        raise InvalidSubscription("url", "the port must be 1 to 65535")
    try:
        address = ipaddress.ip_address(normalise_host(parts.hostname))
    except ValueError:
        return
    if not allow_private and (why := non_public_reason(address)) is not None:
        raise InvalidSubscription("url", f"{parts.hostname} is {why}; add the subscription with --allow-private "
                                         "(allow_private) if the receiver really is there")


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(SECRET_BYTES)).decode("ascii")


def create(ledger, master_key: bytes, request: SubscriptionRequest) -> tuple[Subscription, str]:
    """Store a subscription; returns it and its signing secret (the only time it is shown)."""
    subscription_id = "sub_" + secrets.token_hex(8)
    secret = new_secret()
    sealed = seal(master_key, SEALED_AS, subscription_id, secret)
    url_nonce, url_ciphertext, shown = seal_url(master_key, subscription_id, request.url)
    stored = alert_store.add_subscription(ledger, subscription_id, shown, request.events, request.thresholds,
                                          request.label_prefix, request.vendor, request.format, request.allow_private,
                                          sealed.nonce, sealed.ciphertext, url_nonce, url_ciphertext)
    return stored, secret


def seal_url(master_key: bytes, subscription_id: str, url: str) -> tuple[bytes, bytes, str]:
    """The URL sealed (nonce, ciphertext) and the form lists show."""
    sealed = seal(master_key, SEALED_URL_AS, subscription_id, url)
    return sealed.nonce, sealed.ciphertext, shown_url(url)


def seal_plain_urls(ledger, master_key: bytes) -> int:
    """Seal the receivers' URLs a release before stored whole (the proxy does it at start)."""
    return alert_store.seal_plain_urls(ledger, lambda subscription_id, url: seal_url(master_key, subscription_id, url))


def delivery_url(master_key: bytes, subscription: Subscription) -> str:
    """The receiver's whole URL. Raises MasterKeyError when the master key is not the sealing one."""
    if subscription.url_nonce is None:
        return subscription.url  # stored whole by a release before, not sealed yet
    return unseal(master_key, SEALED_URL_AS, subscription.id,
                  Sealed(subscription.url_nonce, subscription.url_ciphertext))


def signing_secret(master_key: bytes, subscription: Subscription) -> str:
    return unseal(master_key, SEALED_AS, subscription.id,
                  Sealed(subscription.secret_nonce, subscription.secret_ciphertext))


def shown_url(url: str) -> str:
    """The URL as lists show it: scheme, host, port and the first two path segments. A Slack (or
    any capability) URL carries its secret in the rest of the path or the query."""
    parts = urlsplit(url)
    segments = parts.path.split("/")
    path = "/".join(segments[:3]) + ("/…" if len(segments) > 3 else "")
    return f"{parts.scheme}://{parts.netloc}{path}" + ("?…" if parts.query else "")


def document(subscription: Subscription) -> dict:
    """A subscription as the CLI and the API show it: never its secret, nor the full URL."""
    return {"id": subscription.id, "url": shown_url(subscription.url), "events": list(subscription.events),
            "thresholds": list(subscription.thresholds), "label_prefix": subscription.label_prefix,
            "vendor": subscription.vendor, "format": subscription.format,
            "allow_private": subscription.allow_private, "created_at": iso(subscription.created_at),
            "removed_at": iso(subscription.removed_at) if subscription.removed_at else None}


def delivery_document(row: dict) -> dict:
    return {"id": row["id"], "event_id": row["event_id"], "type": row["kind"],
            "subscription_id": row["subscription_id"], "key_id": row["key_id"], "state": row["state"],
            "attempts": row["attempts"], "created_at": row["created_at"], "next_attempt_at":
            row["next_attempt_at"] if row["state"] == "pending" else None,
            "last_attempt_at": row["last_attempt_at"], "last_status": row["last_status"],
            "last_error": row["last_error"], "delivered_at": row["delivered_at"]}
