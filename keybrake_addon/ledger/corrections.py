"""Corrections after the fact: a vendor's final price, or an operator's word on an unknown call.

Each correction is one transaction that moves the money and writes an audit row
(decision `reconciled`) whose actual amount is the change, so audit sums stay true.
"""

from dataclasses import dataclass

from .base import CallFacts
from .sqlite import OPEN_STATES, SqliteLedger, move_money
from .times import from_text, to_text, utc_now


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


def price_checks(ledger: SqliteLedger, *, vendor: str, label: str | None = None,
                 key_id: str | None = None) -> list[PriceCheck]:
    sql = ("SELECT r.id, r.key_id, k.label, k.vendor, k.secret_name, r.object_id, r.actual_micros "
           "FROM reservations r JOIN vault_keys k ON k.key_id = r.key_id "
           "WHERE r.state = 'settled' AND r.estimated = 1 AND r.object_id IS NOT NULL AND k.vendor = ?")
    params: list = [vendor]
    if label is not None:
        sql += " AND k.label = ?"
        params.append(label)
    if key_id is not None:
        sql += " AND r.key_id = ?"
        params.append(key_id)
    return [PriceCheck(r["id"], r["key_id"], r["label"], r["vendor"], r["secret_name"], r["object_id"],
                       r["actual_micros"]) for r in ledger.query(sql + " ORDER BY r.id", tuple(params))]


def apply_final_price(ledger: SqliteLedger, reservation_id: int, final_micros: int) -> Correction:
    """Replace an estimate with the vendor's final price."""
    with ledger.transaction() as db:
        reservation = _reservation(db, reservation_id)
        if reservation["state"] != "settled" or not reservation["estimated"]:
            raise NotCorrectable(f"reservation {reservation_id} is not settled at an estimate")
        before = reservation["actual_micros"]
        move_money(db, reservation, spent=final_micros - before, reserved=0)
        db.execute("UPDATE reservations SET actual_micros = ?, estimated = 0 WHERE id = ?",
                   (final_micros, reservation_id))
        correction = Correction(reservation_id, reservation["key_id"], reservation["object_id"], before, final_micros)
        _audit(db, reservation, correction, "final price from the vendor")
        return correction


def resolve_by_hand(ledger: SqliteLedger, reservation_id: int, actual_micros: int | None) -> Correction:
    """Settle an open (pending or unknown) reservation: at `actual_micros`, or released when None."""
    with ledger.transaction() as db:
        reservation = _reservation(db, reservation_id)
        if reservation["state"] not in OPEN_STATES:
            raise NotCorrectable(f"reservation {reservation_id} is already {reservation['state']}")
        held = reservation["reserved_micros"]
        move_money(db, reservation, spent=actual_micros or 0, reserved=-held)
        state = "released" if actual_micros is None else "settled"
        db.execute("UPDATE reservations SET state = ?, actual_micros = ?, settled_at = ? WHERE id = ?",
                   (state, actual_micros, to_text(utc_now()), reservation_id))
        correction = Correction(reservation_id, reservation["key_id"], reservation["object_id"], held,
                                actual_micros or 0)
        _audit(db, reservation, correction, f"{state} by hand")
        return correction


def _reservation(db, reservation_id: int):
    row = db.execute("SELECT * FROM reservations WHERE id = ?", (reservation_id,)).fetchone()
    if row is None:
        raise NotCorrectable(f"no reservation {reservation_id}")
    return row


def _audit(db, reservation, correction: Correction, note: str) -> None:
    key = db.execute("SELECT label, vendor FROM vault_keys WHERE key_id = ?", (reservation["key_id"],)).fetchone()
    method, _, path = reservation["endpoint"].partition(" ")
    call = CallFacts(key["vendor"], method, path, reservation["idempotency_key"], utc_now())
    spent_change = correction.after_micros - (correction.before_micros if reservation["state"] == "settled" else 0)
    db.execute(
        "INSERT INTO audit (ts, key_id, label, vendor, method, path, decision, outcome, reserved_micros, "
        "actual_micros, object_id, idempotency_key, reservation_id, message) "
        "VALUES (?, ?, ?, ?, ?, ?, 'reconciled', 'settled', 0, ?, ?, ?, ?, ?)",
        (to_text(call.at), reservation["key_id"], key["label"], call.vendor, call.method, call.path,
         spent_change, reservation["object_id"], call.idempotency_key, reservation["id"],
         f"{note}; reserved at {from_text(reservation['created_at']):%Y-%m-%d %H:%M:%S}Z"),
    )
