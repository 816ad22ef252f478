"""The gate: checks one vendor request against its vault key and settles it from the answer.

Independent of mitmproxy, so the forward proxy and the API listener share it.

Where ledger transactions run: each first tries a connection that never waits for SQLite's
write lock, right on the event loop (a free lock makes a transaction ~0.2 ms of CPU, no
fsync: WAL commits do not sync and checkpoints run on their own thread). When another writer
holds the lock, the transaction moves to the gate's database thread, which waits up to the
busy timeout there. So the loop never waits on the database, and the common case skips two
thread hand-offs (about 0.5 ms per request here; see BENCHMARKS.md).
"""

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from types import ModuleType

from . import settlement
from .installation import Installation
from .ledger.base import (
    AdmitRequest,
    CallFacts,
    KeyRecord,
    LedgerBusy,
    LedgerUnavailable,
    Resolution,
    SettleRequest,
)
from .ledger.housekeeping import Housekeeper
from .ledger.sqlite import SqliteLedger
from .ledger.times import utc_now
from .money import format_usd
from .paths import is_ambiguous
from .pricing import Pricing
from .text import loggable
from .vault.crypto import MasterKeyError
from .vault.vault_keys import hash_vault_key, is_vault_key_shaped
from .vendors.base import (
    CostEstimate,
    CredentialEndpoint,
    MalformedRequest,
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
KNOWN_BUSY_S = 1.0
DRAIN_TIMEOUT_S = 5.0
SETTLE_RETRY_DELAYS_S = (0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)  # about 9 minutes in all


@dataclass(frozen=True)
class Ticket:
    """What the request hook leaves for the response hook. Holds no secret."""

    vendor: ModuleType
    method: str
    path: str
    audit_id: int
    reservation_id: int
    created_here: bool
    basis: PricingBasis | None
    key: KeyRecord  # the key's balance when the call was admitted, before its own hold
    reserved_micros: int  # this call's own hold (0 for a retry that attached to an earlier one)
    started: float

    @property
    def key_id(self) -> str:
        return self.key.key_id


@dataclass(frozen=True)
class Decision:
    refusal: RenderedResponse | None = None
    authorization: str | None = None  # the real credential header: set it, then drop this object
    ticket: Ticket | None = None


class Gate:
    def __init__(self, installation: Installation, pricing: Pricing) -> None:
        self._installation = installation
        self._ledger = installation.ledger
        self._vault = installation.vault
        self._pricing = pricing
        self._no_wait_ledger = SqliteLedger(installation.home.database, busy_timeout_s=0,
                                            background_checkpoints=True)
        try:
            self._housekeeper = Housekeeper(installation.home.database)
        except LedgerUnavailable:
            self._no_wait_ledger.close()
            raise
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keybrake-ledger")
        self._unsettled: set[asyncio.Future] = set()
        self._busy_until = 0.0  # monotonic time until which a busy ledger fails fast

    @property
    def installation(self) -> Installation:
        return self._installation

    def close(self) -> None:
        self._db_thread.shutdown(wait=True)
        self._housekeeper.stop()
        self._no_wait_ledger.close()
        self._installation.close()

    async def run_in_db(self, function, *args):
        """Run blocking ledger work on the gate's database thread, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._db_thread, function, *args)

    async def _transact(self, operation: str, *args):
        """A ledger transaction, on the loop if the write lock is free, else on the database thread.

        After a wait on the database thread has timed out, calls fail at once for a moment
        instead of queueing behind each other for a busy timeout apiece: a refusal must come
        back before the client's own timeout.
        """
        try:
            return getattr(self._no_wait_ledger, operation)(*args)
        except LedgerBusy:
            if time.monotonic() < self._busy_until:
                raise
        try:
            return await self.run_in_db(self._unless_known_busy, getattr(self._ledger, operation), *args)
        except LedgerBusy:
            self._busy_until = time.monotonic() + KNOWN_BUSY_S
            raise

    def _unless_known_busy(self, function, *args):
        if time.monotonic() < self._busy_until:  # queued behind a wait that already timed out
            raise LedgerBusy("the ledger was busy a moment ago")
        return function(*args)

    async def check(self, vendor: ModuleType, request: VendorRequest) -> Decision:
        started = time.monotonic()
        call = CallFacts(vendor.NAME, request.method, request.path, vendor.idempotency_key(request.headers),
                         utc_now(), started)
        try:
            return await self._check(vendor, request, call, started)
        except LedgerUnavailable as error:
            logger.error("keybrake: refusing %s %s: %s", loggable(request.method), loggable(request.path), error)
            return Decision(refusal=vendor.render_refusal(Refusal(
                RefusalKind.UNAVAILABLE,
                "Keybrake cannot reach its ledger, so it forwarded nothing. Retrying is safe.",
                retry_after_s=UNAVAILABLE_RETRY_AFTER_S)))

    async def _check(self, vendor: ModuleType, request: VendorRequest, call: CallFacts, started: float) -> Decision:
        credential = vendor.presented_credential(request.headers)
        early = _credential_refusal(vendor, credential.token if credential else None)
        if early is None and is_ambiguous(request.path):
            early = Refusal(RefusalKind.INVALID_REQUEST,
                            f"Keybrake refuses {request.path!r}: dot segments, empty segments or escaped "
                            "separators could reach another endpoint than the one checked.")
        if early is not None:
            await self._transact("record_refusal", call, early)
            return Decision(refusal=vendor.render_refusal(early))

        estimate, pricing_refusal = _estimate(vendor, request, self._pricing)
        admission = await self._transact("admit", AdmitRequest(
            hash_vault_key(credential.token), call, estimate, pricing_refusal, vendor.account_ref(request),
            self._housekeeper.run_id))
        if admission.refusal is not None:
            return Decision(refusal=vendor.render_refusal(admission.refusal))

        ticket = Ticket(vendor, request.method, request.path, admission.audit_id, admission.reservation_id,
                        admission.created_reservation, admission.basis, admission.key, admission.reserved_micros,
                        started)
        try:
            if admission.secret is None:
                raise MasterKeyError(f"the {vendor.NAME} secret {admission.key.spec.secret_name!r} is not in the vault")
            authorization = vendor.authorization_header(
                self._vault.open(admission.secret), admission.secret.auth_user or admission.secret.account_sid)
        except (MasterKeyError, ValueError) as error:  # ValueError: the secret lacks what the vendor needs
            logger.error("keybrake: cannot open the secret for key %s: %s", admission.key.key_id, error)
            self.settle_without_reply(ticket, request_sent=False, error=str(error))
            return Decision(refusal=vendor.render_refusal(Refusal(
                RefusalKind.UNAVAILABLE, f"Keybrake cannot open the vendor secret for vault key "
                f"{admission.key.key_id}; nothing was forwarded. Check `keybrake secret list`.",
                retry_after_s=UNAVAILABLE_RETRY_AFTER_S)))
        return Decision(authorization=authorization, ticket=ticket)

    def settle_without_reply(self, ticket: Ticket, *, request_sent: bool, error: str) -> None:
        """Settle a call that got no vendor response (in the background, retried while needed)."""
        self._settle_in_background(ticket, self._settle_request(ticket, None, request_sent, error))

    def settle_after_reply(self, ticket: Ticket, response: VendorResponse) -> dict[str, str]:
        """Settle once the reply is on its way; returns the balance headers for that reply.

        The client need not wait for the ledger: until the settlement commits, the call's hold
        still counts against the caps, so nothing can overspend meanwhile. The headers show the
        balance the settlement will leave, as of this call (concurrent calls may move it on).
        """
        request = self._settle_request(ticket, response, True, None)
        # call_soon: after this hook returns and mitmproxy has written the reply. (Not the database
        # thread: measured, its GIL contention with the loop costs more than it saves.)
        asyncio.get_running_loop().call_soon(self._settle_in_background, ticket, request)
        return balance_headers(_balance_after(ticket, request))

    def _settle_in_background(self, ticket: Ticket, request: SettleRequest) -> None:
        task = asyncio.ensure_future(self._settle(ticket, request))
        if not task.done():
            self._unsettled.add(task)
            task.add_done_callback(self._unsettled.discard)

    async def drain(self) -> None:
        """Give settlements still under way a few seconds at shutdown; the rest stay counted."""
        if self._unsettled:
            await asyncio.wait(self._unsettled, timeout=DRAIN_TIMEOUT_S)
        for task in list(self._unsettled):
            task.cancel()  # its hold stays pending, counted, and shows as unknown once this run stops

    def _settle_request(self, ticket: Ticket, response: VendorResponse | None, request_sent: bool,
                        error: str | None) -> SettleRequest:
        vendor = ticket.vendor
        outcome = None
        if response is not None:
            outcome = vendor.outcome(VendorRequest(ticket.method, ticket.path, "", {}, b""), response,
                                     self._pricing.for_vendor(vendor.NAME))
        resolution, actual = settlement.resolve(
            created_here=ticket.created_here, basis=ticket.basis, status=response.status if response else None,
            outcome=outcome, request_sent=request_sent)
        return SettleRequest(
            audit_id=ticket.audit_id, reservation_id=ticket.reservation_id, resolution=resolution,
            actual_micros=actual, status=response.status if response else None,
            object_ids=outcome.object_ids if outcome else (),
            vendor_request_id=outcome.vendor_request_id if outcome else None,
            amount_minor=outcome.amount_minor if outcome else None, currency=outcome.currency if outcome else None,
            replayed=outcome.replayed if outcome else False, duration_ms=(time.monotonic() - ticket.started) * 1000,
            error=error)

    async def _settle(self, ticket: Ticket, request: SettleRequest) -> None:
        """Settle, retrying while the ledger is unavailable: the vendor's answer is the truth.

        Until it lands the hold stays counted; if this process dies first, the hold shows as
        unknown (see ledger/housekeeping.py) and `keybrake reconcile` settles it.
        """
        for delay in (*SETTLE_RETRY_DELAYS_S, None):
            try:
                await self._transact("settle", request)
                return
            except LedgerUnavailable as failure:
                if delay is None:
                    _log_unsettled(ticket, failure)
                    return
                await asyncio.sleep(delay)
            except Exception as failure:  # noqa: BLE001 - whatever it is, the hold must stay counted
                _log_unsettled(ticket, failure)
                return


def _log_unsettled(ticket: Ticket, failure: Exception) -> None:
    # The hold stays counted (never under-count); `keybrake keys show` lists it as open.
    logger.error("keybrake: could not settle reservation %s of key %s: %s", ticket.reservation_id,
                 ticket.key_id, type(failure).__name__)


def _balance_after(ticket: Ticket, request: SettleRequest) -> KeyRecord:
    """The key's balance once this call settles, from the snapshot taken when it was admitted."""
    key = ticket.key
    if not ticket.created_here:
        return key  # a retry: its hold was already in the snapshot
    if request.resolution is Resolution.SETTLE:
        spent = ticket.reserved_micros if request.actual_micros is None else request.actual_micros
        return replace(key, spent_micros=key.spent_micros + spent, today_spent_micros=key.today_spent_micros + spent)
    if request.resolution is Resolution.UNKNOWN:
        held = ticket.reserved_micros
        return replace(key, reserved_micros=key.reserved_micros + held,
                       today_reserved_micros=key.today_reserved_micros + held)
    return key


def balance_headers(key: KeyRecord) -> dict[str, str]:
    remaining = key.remaining_micros()
    return {
        "x-keybrake-key-id": key.key_id,
        "x-keybrake-spent-usd": format_usd(key.spent_micros),
        "x-keybrake-remaining-usd": "unlimited" if remaining is None else format_usd(remaining),
    }


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
        return vendor.estimate(request, pricing.for_vendor(vendor.NAME)), None
    except UnknownCurrency as error:
        return None, Refusal(RefusalKind.UNKNOWN_CURRENCY, f"Keybrake refused {request.method} {request.path}: {error}.")
    except Unpriced as error:
        return None, Refusal(RefusalKind.UNPRICED, f"Keybrake cannot price {request.method} {request.path}: {error}.")
    except MalformedRequest as error:
        return None, Refusal(RefusalKind.INVALID_REQUEST, f"Keybrake could not price this call: {error}.")
    except CredentialEndpoint as error:
        return None, Refusal(RefusalKind.CREDENTIAL_ENDPOINT,
                             f"Keybrake never forwards {request.method} {request.path}: {error}.")
