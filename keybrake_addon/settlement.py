"""How a vendor's answer (or its absence) resolves a reservation. Pure: no I/O.

The rule behind every branch: if money may have moved and we do not know how much, the hold
stays counted.
"""

from .ledger.base import Resolution
from .vendors.base import Outcome, PricingBasis


def resolve(*, opened: bool, basis: PricingBasis | None, status: int | None,
            outcome: Outcome | None, request_sent: bool) -> tuple[Resolution, int | None]:
    """Returns the resolution and, for SETTLE, the actual USD micros (None: keep the estimate).

    opened: this request opened the reservation (False for a retry that attached to it).
    """
    if status is None:  # no response at all
        if not request_sent:
            return (Resolution.RELEASE if opened else Resolution.LEAVE), None
        return Resolution.UNKNOWN, None
    if status >= 500:
        return Resolution.UNKNOWN, None
    if 200 <= status < 300:
        if basis is PricingBasis.ALREADY_COUNTED:
            return Resolution.SETTLE, 0
        # A replay is passed on at its amount: whether it is this reservation's money (a retry of it
        # charged first) or a result saved before the reservation existed, only the ledger can tell.
        return Resolution.SETTLE, outcome.usd_micros if outcome is not None else None
    if status < 200 or 300 <= status < 400:
        return Resolution.UNKNOWN, None  # no vendor answers a money call like this; stay safe
    if not opened and not (outcome is not None and outcome.replayed):
        # A retry's own refusal (in flight, rate limited, other parameters) says nothing about
        # the first attempt, which may have charged: only a replay of that attempt's answer does.
        return Resolution.LEAVE, None
    return Resolution.RELEASE, None
