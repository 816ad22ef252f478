"""Corrections after the fact: a vendor's final price, or an operator's word on an unknown call.

Each correction is one transaction (see SqlLedger.correct) that moves the money, as
decisions.py says, and writes an audit row (decision `reconciled`) whose actual amount is the
change, so audit sums stay true.
"""

from dataclasses import dataclass

from . import decisions
from .decisions import OPEN_STATES
from .store import SqlLedger
from .times import to_text


@dataclass(frozen=True)
class PriceCheck:
    """A reservation settled at its estimate because the vendor had no price yet."""

    reservation_id: int
    key_id: str
    label: str | None
    vendor: str
    secret_name: str
    object_id: str
    estimated_micros: int


@dataclass(frozen=True)
class Correction:
    reservation_id: int
    key_id: str
    object_id: str | None
    before_micros: int  # counted before: the estimate, or the open hold
    after_micros: int

    @property
    def delta_micros(self) -> int:
        return self.after_micros - self.before_micros


class NotCorrectable(Exception):
    pass


def price_checks(ledger: SqlLedger, *, vendor: str, label: str | None = None,
                 key_id: str | None = None) -> list[PriceCheck]:
    return [PriceCheck(r["id"], r["key_id"], r["label"], r["vendor"], r["secret_name"], r["object_id"],
                       r["actual_micros"]) for r in ledger.price_checks(vendor=vendor, label=label, key_id=key_id)]


def apply_final_price(ledger: SqlLedger, reservation_id: int, final_micros: int) -> Correction:
    """Replace an estimate with the vendor's final price."""
    def change(reservation, row, counters, now):
        if reservation.state != "settled" or not row["estimated"]:
            raise NotCorrectable(f"reservation {reservation_id} is not settled at an estimate")
        return (decisions.correct_price(reservation, counters, final_micros),
                {"actual_micros": final_micros, "estimated": 0}, reservation.actual, final_micros,
                "final price from the vendor")

    return _correct(ledger, reservation_id, change)


def resolve_by_hand(ledger: SqlLedger, reservation_id: int, actual_micros: int | None) -> Correction:
    """Settle an open (pending or unknown) reservation: at `actual_micros`, or released when None."""
    state = "released" if actual_micros is None else "settled"

    def change(reservation, row, counters, now):
        if reservation.state not in OPEN_STATES:
            raise NotCorrectable(f"reservation {reservation_id} is already {reservation.state}")
        return (decisions.resolve_by_hand(reservation, counters, actual_micros),
                {"state": state, "actual_micros": actual_micros, "settled_at": to_text(now), "attempts_open": 0},
                reservation.reserved, actual_micros or 0, f"{state} by hand")

    return _correct(ledger, reservation_id, change)


def _correct(ledger: SqlLedger, reservation_id: int, change) -> Correction:
    try:
        row, before, after = ledger.correct(reservation_id, change)
    except LookupError as failure:
        raise NotCorrectable(str(failure).strip("'\"")) from None
    return Correction(reservation_id, row["key_id"], row["object_id"], before, after)
