"""`keybrake reconcile`: replace Twilio estimates with final prices, fetched from Twilio.

Twilio returns `price: null` when a message is created and fills it in later, so those calls
are first counted at Keybrake's estimate. This fetches each such message or call with the
real secret and corrects the ledger.
"""

import base64
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import certifi

from .installation import Installation
from .ledger.corrections import Correction, PriceCheck, apply_final_price, price_checks
from .vendors import twilio
from .vendors.base import VendorResponse

TWILIO_BASE_URL = "https://api.twilio.com"
TIMEOUT_S = 20


@dataclass(frozen=True)
class CheckResult:
    check: PriceCheck
    correction: Correction | None  # None: no final price yet, or the lookup failed
    problem: str | None = None


def reconcile_twilio(installation: Installation, *, base_url: str = TWILIO_BASE_URL, label: str | None = None,
                     key_id: str | None = None, dry_run: bool = False) -> Iterator[CheckResult]:
    """Yields one result per estimated Twilio message or call, as it goes."""
    # Straight to Twilio: a worker's HTTPS_PROXY may point at Keybrake, which refuses real secrets.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=certifi.where())))
    for check in price_checks(installation.ledger, vendor="twilio", label=label, key_id=key_id):
        sealed = installation.ledger.get_secret("twilio", check.secret_name)
        if sealed is None or sealed.account_sid is None:
            yield CheckResult(check, None, f"the twilio secret {check.secret_name!r} is gone")
            continue
        user = sealed.auth_user or sealed.account_sid
        credentials = base64.b64encode(f"{user}:{installation.vault.open(sealed)}".encode()).decode()
        request = urllib.request.Request(base_url.rstrip("/") + twilio.price_lookup_path(check.object_id,
                                                                                       sealed.account_sid),
                                         headers={"Authorization": f"Basic {credentials}"})
        del credentials
        try:
            with opener.open(request, timeout=TIMEOUT_S) as answer:
                response = VendorResponse(answer.status, {}, answer.read())
        except urllib.error.HTTPError as failure:
            yield CheckResult(check, None, f"Twilio answered {failure.code}")
            continue
        except (urllib.error.URLError, OSError) as failure:
            yield CheckResult(check, None, f"could not reach Twilio: {failure}")
            continue
        final = twilio.final_price(response)
        if final is None:
            yield CheckResult(check, None, "no final price yet")
        elif dry_run:
            yield CheckResult(check, Correction(check.reservation_id, check.key_id, check.object_id,
                                                check.estimated_micros, final))
        else:
            yield CheckResult(check, apply_final_price(installation.ledger, check.reservation_id, final))
