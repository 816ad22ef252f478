"""The gate: checks one vendor request against its vault key and settles it from the answer.

Independent of mitmproxy, so the forward proxy and the API listener share it. It awaits the
ledger (ledger/executor.py) for each admit and hands it each settlement without waiting; the
money rules themselves live in ledger/decisions.py.
"""

import asyncio
import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

from . import settlement
from .access_log import ACCESS_LOG_OFF, AccessLog
from .alerts.deliverer import Deliverer
from .body_framing import encoded_body_reason
from .installation import Installation
from .keyless_audit import KeylessAudit
from .keyless_refusals import LogBudget
from .ledger import decisions
from .ledger.base import NO_VALID_KEY, AdmitRequest, CallFacts, KeyRecord, LedgerUnavailable, SettleRequest
from .ledger.executor import AsyncLedger
from .ledger.housekeeping import Housekeeper
from .ledger.times import utc_now
from .money import LARGEST_USD, MICROS_PER_USD, format_usd
from .paths import is_ambiguous
from .pricing import Pricing
from .records import frozen
from .text import is_storable, loggable
from .vault.crypto import MasterKeyError
from .vault.vault_keys import hash_vault_key, is_vault_key_shaped
from .vendors.base import (
    CostEstimate,
    CredentialEndpoint,
    MalformedRequest,
    OtherAccount,
    PricingBasis,
    Refusal,
    RefusalKind,
    RenderedResponse,
    UnknownCurrency,
    Unpriced,
    VendorRequest,
    VendorResponse,
)

logger = logging.getLogger("keybrake")

UNAVAILABLE_RETRY_AFTER_S = 2
# The largest call the gate prices: what a cap can be, and far more minor units than $1e9 is in
# any currency. Past them an amount could overflow the ledger's 64-bit integers.
LARGEST_ESTIMATE_MICROS = LARGEST_USD * MICROS_PER_USD
LARGEST_AMOUNT_MINOR = 10**15
DRAIN_TIMEOUT_S = 5.0
# A request with a key-shaped token reaches the ledger, so while the ledger is down each one would
# log a line: bounded, like the audit rows of such requests.
_UNAVAILABLE_LOG = LogBudget()


@frozen
class Ticket:
    """What the request hook leaves for the response hook. Holds no secret."""

    vendor: ModuleType
    method: str
    path: str
    audit_id: int
    reservation_id: int
    opened: bool  # this call answers for its reservation's hold (False: a retry attached to it)
    basis: PricingBasis | None
    key: KeyRecord  # the key's balance when the call was admitted, before its own hold
    reserved_micros: int  # this call's own hold (0 for a retry that attached to an earlier one)
    started: float
    budget_headroom_micros: int | None = None  # under the key's budgets, before its own hold

    @property
    def key_id(self) -> str:
        return self.key.key_id


@frozen
class Decision:
    refusal: RenderedResponse | None = None
    authorization: str | None = None  # the real credential header: set it, then drop this object
    ticket: Ticket | None = None
    forward_body: bytes | None = None  # the body to send instead of the client's (CostEstimate.forward_body)
    key: KeyRecord | None = None  # the key a refusal was decided for, when it was found (the access log's)
    refused_as: RefusalKind | None = None  # why it was refused: the metrics count by it
    # False for a keyless refusal past its bound (keyless_refusals.py): no audit row, and no
    # access-log line either, or the log would reopen what the bound closes.
    recorded: bool = True


class Gate:
    access_log: AccessLog = ACCESS_LOG_OFF  # the proxy hands over its own (access_log.py)

    def __init__(self, installation: Installation, pricing: Pricing) -> None:
        self._installation = installation
        self._vault = installation.vault
        self._pricing = pricing
        self._ledger = installation.async_ledger()
        try:
            self._housekeeper = Housekeeper(installation)
        except LedgerUnavailable:
            self._ledger.close()
            raise
        self._db_thread = ThreadPoolExecutor(max_workers=2, thread_name_prefix="keybrake-reads")
        self._keyless = KeylessAudit(self._ledger)
        # Alerts leave from their own thread: never on the vendor-call path.
        self._alerts = Deliverer(installation.ledger, installation.master_key, run_id=self._housekeeper.run_id,
                                 outages=self._ledger.outages)

    @property
    def installation(self) -> Installation:
        return self._installation

    @property
    def ledger(self) -> AsyncLedger:
        return self._ledger

    def close(self) -> None:
        self._keyless.close()
        self._alerts.stop()
        self._db_thread.shutdown(wait=True)
        self._housekeeper.stop()
        self._ledger.close()
        self._installation.close()

    async def run_in_db(self, function, *args):
        """Run blocking ledger work (the vault API, reports) on a thread, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._db_thread, function, *args)

    async def check(self, vendor: ModuleType, request: VendorRequest, client_address: str | None = None) -> Decision:
        """`client_address`: who sent it, to bound what a client without a valid key gets audited."""
        started = time.monotonic()
        call = CallFacts(vendor.NAME, request.method, request.path, vendor.idempotency_key(request.headers),
                         utc_now(), started, vendor.refusal_status)
        try:
            decision = await self._check(vendor, request, call, started, client_address)
        except LedgerUnavailable as error:
            _UNAVAILABLE_LOG.log(logger, logging.ERROR, "keybrake: refusing %s %s: %s", loggable(request.method),
                                 loggable(request.path), error)
            decision = _refused(vendor, Refusal(
                RefusalKind.UNAVAILABLE,
                "Keybrake cannot reach its ledger, so it forwarded nothing. Retrying is safe.",
                retry_after_s=UNAVAILABLE_RETRY_AFTER_S))
        if decision.refusal is not None and decision.recorded:
            self.access_log.refused(vendor.NAME, request.method, request.path, decision.refusal, decision.key,
                                    (time.monotonic() - started) * 1000)
        return decision

    async def _check(self, vendor: ModuleType, request: VendorRequest, call: CallFacts, started: float,
                     client_address: str | None) -> Decision:
        credential = vendor.presented_credential(request.headers)
        early = _credential_refusal(vendor, credential.token if credential else None)
        if early is None and is_ambiguous(request.path):
            early = Refusal(RefusalKind.INVALID_REQUEST,
                            f"Keybrake refuses {loggable(request.path)!r}: dot segments, empty segments or escaped "
                            "separators could reach another endpoint than the one checked.")
        if early is None:
            early = _unstorable_refusal(request.method, request.path, call.idempotency_key)
        if early is None and request.repeated_headers:
            early = Refusal(RefusalKind.INVALID_REQUEST,
                            f"Keybrake refuses more than one {', '.join(request.repeated_headers)} header line: "
                            "the vendor could read another value than the one checked.")
        if early is None and request.malformed_headers:
            early = Refusal(RefusalKind.INVALID_REQUEST,
                            f"Keybrake refuses a header line that is not well formed ({', '.join(request.malformed_headers)}"
                            "): a space or tab in its name, or a line break in its value. The vendor could read it "
                            "otherwise than Keybrake did.")
        if early is None and (reason := encoded_body_reason(request.headers)) is not None:
            early = Refusal(RefusalKind.INVALID_REQUEST, loggable(reason, 400) + ".")
        if early is not None:  # no key known yet: audited within the bounds of keyless_refusals.py
            recorded = self._keyless.refused(call, early, client_address)
            return _refused(vendor, early, recorded=recorded)

        estimate, pricing_refusal = _estimate(vendor, request, self._pricing)
        admission = await self._ledger.admit(AdmitRequest(
            hash_vault_key(credential.token), call, estimate, pricing_refusal, vendor.account_ref(request),
            run_id=self._housekeeper.run_id, audit_invalid_key=False,
            connected_account=vendor.connected_account(request)))
        if admission.refusal is not None:
            recorded = True
            if admission.refusal.kind in NO_VALID_KEY:  # its row is ours to write, within the bounds
                recorded = self._keyless.refused(call, admission.refusal, client_address, admission.key)
            return _refused(vendor, admission.refusal, admission.key, recorded=recorded)

        ticket = Ticket(vendor, request.method, request.path, admission.audit_id, admission.reservation_id,
                        admission.opened, admission.basis, admission.key, admission.reserved_micros,
                        started, admission.budget_headroom_micros)
        try:
            if admission.secret is None:
                raise MasterKeyError(f"the {vendor.NAME} secret {admission.key.spec.secret_name!r} is not in the vault")
            authorization = vendor.authorization_header(
                self._vault.open(admission.secret), admission.secret.auth_user or admission.secret.account_sid)
        except (MasterKeyError, ValueError) as error:  # ValueError: the secret lacks what the vendor needs
            logger.error("keybrake: cannot open the secret for key %s: %s", admission.key.key_id, error)
            self.settle_without_reply(ticket, request_sent=False, error=str(error))
            return _refused(vendor, Refusal(
                RefusalKind.UNAVAILABLE, f"Keybrake cannot open the vendor secret for vault key "
                f"{admission.key.key_id}; nothing was forwarded. Check `keybrake secret list`.",
                retry_after_s=UNAVAILABLE_RETRY_AFTER_S), admission.key)
        return Decision(authorization=authorization, ticket=ticket,
                        forward_body=estimate.forward_body if estimate is not None else None)

    def settle_without_reply(self, ticket: Ticket, *, request_sent: bool, error: str,
                             client_status: int | None = None) -> None:
        """Settle a call that got no vendor response (in the background, retried while needed).

        `client_status`: what the client got instead (the proxy's own 502), for the audit row only.
        """
        request = self._settle_request(ticket, None, request_sent, error)
        if client_status is not None:
            request = dataclasses.replace(request, status=client_status)
        self._ledger.settle(request)
        self.access_log.call(ticket, request)

    def settle_after_reply(self, ticket: Ticket, response: VendorResponse) -> dict[str, str]:
        """Settle once the reply is on its way; returns the balance headers for that reply.

        The client need not wait for the ledger: until the settlement commits, the call's hold
        still counts against the caps, so nothing can overspend meanwhile. The headers show the
        balance the settlement will leave, as of this call (concurrent calls may move it on).
        """
        request = self._settle_request(ticket, response, True, None)
        # call_soon: after this hook returns and mitmproxy has written the reply.
        asyncio.get_running_loop().call_soon(self._ledger.settle, request)
        self.access_log.call(ticket, request)
        moved = dict(opened=ticket.opened, reserved_micros=ticket.reserved_micros, resolution=request.resolution,
                     actual_micros=request.actual_micros, replayed=request.replayed)
        return balance_headers(decisions.balance_after(ticket.key, **moved),
                               decisions.headroom_after(ticket.budget_headroom_micros, **moved))

    async def drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> int:
        """Give settlements still queued up to `timeout_s` at shutdown; the rest stay counted.

        Returns how many were left unwritten (the ledger logs each at close).
        """
        self._keyless.flush(final=True)  # the refusals counted but not yet summarised
        return (await self._ledger.drain(timeout_s)).left

    def _settle_request(self, ticket: Ticket, response: VendorResponse | None, request_sent: bool,
                        error: str | None) -> SettleRequest:
        vendor = ticket.vendor
        outcome = None
        if response is not None:
            outcome = vendor.outcome(VendorRequest(ticket.method, ticket.path, "", {}, b""), response,
                                     self._pricing.for_vendor(vendor.NAME))
        resolution, actual = settlement.resolve(
            opened=ticket.opened, basis=ticket.basis, status=response.status if response else None,
            outcome=outcome, request_sent=request_sent)
        return SettleRequest(
            audit_id=ticket.audit_id, reservation_id=ticket.reservation_id, resolution=resolution,
            actual_micros=actual, status=response.status if response else None,
            object_ids=outcome.object_ids if outcome else (),
            vendor_request_id=outcome.vendor_request_id if outcome else None,
            amount_minor=outcome.amount_minor if outcome else None, currency=outcome.currency if outcome else None,
            replayed=outcome.replayed if outcome else False, duration_ms=(time.monotonic() - ticket.started) * 1000,
            error=error, opened=ticket.opened)


def balance_headers(key: KeyRecord, budget_headroom_micros: int | None = None) -> dict[str, str]:
    """The balance a reply carries: what the key may still spend, its budgets' headroom included."""
    remaining = min((m for m in (key.remaining_micros(), budget_headroom_micros) if m is not None), default=None)
    return {
        "x-keybrake-key-id": key.key_id,
        "x-keybrake-spent-usd": format_usd(key.spent_micros),
        "x-keybrake-remaining-usd": "unlimited" if remaining is None else format_usd(remaining),
    }


def _refused(vendor: ModuleType, refusal: Refusal, key: KeyRecord | None = None, *, recorded: bool = True) -> Decision:
    return Decision(refusal=vendor.render_refusal(refusal), refused_as=refusal.kind, key=key, recorded=recorded)


def _unstorable_refusal(method: str, path: str, idempotency_key: str | None) -> Refusal | None:
    """A NUL byte, or bytes of a method or path that are not UTF-8, which mitmproxy passes through
    as sent. No ledger stores them as they are (header values are read as Latin-1, so only NUL is
    left there), and a retry is matched by the Idempotency-Key the ledger keeps: it must be the one
    sent."""
    if not is_storable(method) or not is_storable(path):
        return Refusal(RefusalKind.INVALID_REQUEST,
                       "Keybrake refuses a method or path with a NUL byte or bytes that are not UTF-8.")
    if idempotency_key is not None and not is_storable(idempotency_key):
        return Refusal(RefusalKind.INVALID_REQUEST, "Keybrake refuses an Idempotency-Key with a NUL byte: the ledger "
                       "could not keep it as sent, to match the call's retries.")
    return None


def _credential_refusal(vendor: ModuleType, token: str | None) -> Refusal | None:
    """Refusals that need no database: no key, or something that cannot be a vault key."""
    if token is None:
        return Refusal(RefusalKind.MISSING_KEY,
                       f"No API key was sent. Send your Keybrake vault key where the {vendor.NAME} secret would go.")
    if vendor.looks_like_real_secret(token):
        return Refusal(RefusalKind.REAL_SECRET,
                       f"A real {vendor.NAME} secret was sent through Keybrake, which takes vault keys only. "
                       "Store the secret with `keybrake secret set` and give workers a vault key.")
    if not is_vault_key_shaped(token):
        return Refusal(RefusalKind.UNKNOWN_KEY,
                       "This is not a Keybrake vault key. Ask the parent job for a key issued by "
                       "`keybrake issue` or POST /vault/keys.")
    return None


def _estimate(vendor: ModuleType, request: VendorRequest, pricing: Pricing) -> tuple[CostEstimate | None, Refusal | None]:
    try:
        estimate = vendor.estimate(request, pricing.for_vendor(vendor.NAME))
    except UnknownCurrency as error:
        return None, Refusal(RefusalKind.UNKNOWN_CURRENCY, f"Keybrake refused {request.method} {request.path}: {error}.")
    except Unpriced as error:
        return None, Refusal(RefusalKind.UNPRICED, f"Keybrake cannot price {request.method} {request.path}: {error}.")
    except MalformedRequest as error:
        return None, Refusal(RefusalKind.INVALID_REQUEST, f"Keybrake could not price this call: {error}.")
    except OtherAccount as error:
        return None, Refusal(RefusalKind.ACCOUNT_MISMATCH, f"Keybrake refused {request.method} {request.path}: {error}.")
    except CredentialEndpoint as error:
        return None, Refusal(RefusalKind.CREDENTIAL_ENDPOINT,
                             f"Keybrake never forwards {request.method} {request.path}: {error}.")
    if estimate.usd_micros > LARGEST_ESTIMATE_MICROS or (estimate.amount_minor or 0) > LARGEST_AMOUNT_MINOR:
        # A key without a cap admits any amount: it must still fit the ledger's integers.
        return None, Refusal(RefusalKind.INVALID_REQUEST, f"Keybrake could not price this call: it counts amounts up "
                             f"to ${LARGEST_USD:,} (and {LARGEST_AMOUNT_MINOR:,} in a currency's minor units).")
    return estimate, None
