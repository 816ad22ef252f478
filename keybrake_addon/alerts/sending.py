"""One delivery attempt: check where the URL leads, sign the body, POST it, say what happened.

Delivery is an egress point. The receiver's name is resolved at every attempt and each address
judged like the egress policy judges a worker's destination (egress_policy.non_public_reason): a
private, loopback, link-local or metadata address is refused unless the subscription was added
with --allow-private. The connection goes to the address that was checked (the Host header and
TLS's server name keep the name), so a second lookup cannot send it elsewhere. Redirects are not
followed, and the environment's proxy settings are ignored.

Signatures follow Standard Webhooks: `webhook-id` (the event's id, the same on every retry, for
the receiver to drop duplicates), `webhook-timestamp` (this attempt's), and `webhook-signature`,
made with the `standardwebhooks` library. A Slack subscription gets a `{"text": ...}` body,
signed the same way (Slack ignores the headers).
"""

import ipaddress
import json
import socket
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook

from .. import __version__
from ..egress_policy import IPAddress, non_public_reason, normalise_host, unmapped
from ..ledger.alert_store import AttemptResult

SEND_TIMEOUT_S = 5.0  # per phase (connect, write, read): a slow receiver never holds the deliverer long
USER_AGENT = f"Keybrake-Alerts/{__version__}"


def send(url: str, *, allow_private: bool, secret: str, event_id: str, payload: str, fmt: str,
         timeout_s: float = SEND_TIMEOUT_S, resolver=None) -> AttemptResult:
    parts = urlsplit(url)
    host = normalise_host(parts.hostname or "")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = (resolver or resolve)(host, port)
    if not addresses:
        return AttemptResult(False, None, f"{host[:80]} does not resolve")
    address, refusal = pick_address(addresses, allow_private)
    if address is None:
        return AttemptResult(False, None, f"refused: {host[:80]} resolves to {refusal}; add the subscription with "
                                          "--allow-private if the receiver really is there")
    body = body_for(fmt, payload)
    headers = signed_headers(secret, event_id, body)
    headers.update({"content-type": "application/json", "user-agent": USER_AGENT,
                    "host": host if parts.port is None else f"{_bracketed(host)}:{parts.port}"})
    pinned = parts._replace(netloc=f"{_bracketed(str(address))}:{port}").geturl()
    extensions = {"sni_hostname": host} if parts.scheme == "https" and _literal(host) is None else {}
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
            request = client.build_request("POST", pinned, content=body.encode(), headers=headers,
                                           extensions=extensions)
            response = client.send(request, stream=True)
            response.close()  # the receiver's body is not read: only its status counts
    except httpx.TimeoutException:
        return AttemptResult(False, None, f"no answer within {timeout_s:g} s")
    except httpx.HTTPError as error:
        return AttemptResult(False, None, f"could not deliver: {type(error).__name__}")
    if 200 <= response.status_code < 300:
        return AttemptResult(True, response.status_code, None)
    return AttemptResult(False, response.status_code, f"the receiver answered HTTP {response.status_code}")


def signed_headers(secret: str, event_id: str, body: str, now: datetime | None = None) -> dict[str, str]:
    now = now or datetime.now(UTC)
    return {"webhook-id": event_id, "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(event_id, now, body)}


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address of host (a literal is its own); none when the lookup fails."""
    if (literal := _literal(host)) is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].partition("%")[0]) for info in infos))


def pick_address(addresses: list[IPAddress], allow_private: bool) -> tuple[IPAddress | None, str | None]:
    """The first address that may be reached, or None and why the first one may not."""
    first_refusal = None
    for address in addresses:
        why = None if allow_private else non_public_reason(address)
        if why is None:
            return unmapped(address), None
        first_refusal = first_refusal or why
    return None, first_refusal


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# --- bodies ----------------------------------------------------------------------------------------

def body_for(fmt: str, payload: str) -> str:
    """The stored payload for `standard`, or Slack's `{"text": ...}` rendering of it."""
    if fmt != "slack":
        return payload
    return json.dumps({"text": slack_text(json.loads(payload))})


def slack_text(event: dict) -> str:
    kind, data = event.get("type", ""), event.get("data", {})
    key = f"key `{data.get('key_id')}`" + (f" (label `{data['label']}`, {data.get('vendor')})" if data.get("label")
                                           else f" ({data.get('vendor')})")
    if kind == "key.threshold_crossed":
        text = (f"{key} is at {data['threshold_percent']}% of its {data['cap']} cap: ${data['used_usd']} of "
                f"${data['cap_usd']} (spent ${data['spent_usd']}, reserved ${data['reserved_usd']})")
    elif kind == "key.cap_hit":
        limit = f"{data.get('max_calls')} calls" if data.get("cap") == "calls" else f"${data.get('cap_usd')}"
        text = f"{key} hit its {data.get('cap')} cap ({limit}): calls are refused until the cap allows them again"
    elif kind == "budget.threshold_crossed":
        text = (f"{_budget(data)} is at {data['threshold_percent']}% of its {data['cap']} cap: ${data['used_usd']} of "
                f"${data['cap_usd']} (spent ${data['spent_usd']}, reserved ${data['reserved_usd']})")
    elif kind == "budget.cap_hit":
        text = (f"{_budget(data)} hit its {data.get('cap')} cap (${data.get('cap_usd')}): every key under it is refused "
                f"until the cap allows them again (first refused: key `{data.get('refused_key_id')}`)")
    elif kind == "key.revoked":
        text = f"{key} was revoked (spent ${data['spent_usd']}, reserved ${data['reserved_usd']})"
    elif kind == "key.expired":
        text = (f"{key} expired with ${data['reserved_usd']} still reserved: check the open holds with "
                f"`keybrake keys show {data.get('key_id')}`")
    elif kind == "reservation.unknown":
        text = (f"a ${data['reserved_usd']} hold of {key} on {data.get('endpoint')} has an unknown outcome "
                f"({data.get('reason')}); settle it with `keybrake reconcile`")
    elif kind == "ledger.unavailable":
        text = (f"the ledger was unavailable to proxy run {data.get('run_id')} on {data.get('host')} from "
                f"{data.get('started_at')} ({data.get('reason')}); vendor calls got 503s meanwhile")
    elif kind == "ledger.recovered":
        text = (f"the ledger answers proxy run {data.get('run_id')} on {data.get('host')} again since "
                f"{data.get('ended_at')}, after {data.get('seconds')} s")
    else:
        text = data.get("message") or kind
    return f":rotating_light: Keybrake: {text}"


def _budget(data: dict) -> str:
    return f"budget `{data.get('budget')}`" + (f" (under `{data['parent']}`)" if data.get("parent") else "")
