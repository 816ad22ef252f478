"""Every money rule of the ledger, as pure functions from the state read to a plan to write.

A store reads the state under the lock its transaction holds (SQLite's write lock, or the key
row's `FOR UPDATE` in PostgreSQL), passes it here with the database's clock, and writes back
what the plan says in the same transaction. Nothing here does I/O or reads a clock, so each
rule is tested on its own and both backends decide alike.

The rules in one place:
- The daily window is the UTC day of the database's clock at decision time. A key's window
  never moves back, so a decision that reads an earlier clock (a replica, a stale request)
  cannot wipe today's counters.
- A reservation's hold counts against the window it was decided in. A retry that attaches
  to a hold from an earlier window moves the whole hold into the current one (cap-checked):
  a top-up after midnight is never booked on a day that is already over.
- A hold stays counted until every attempt on it has answered. A retry in flight keeps it
  counted even when the first attempt says "nothing moved", so its own answer cannot land
  on a released hold past the cap.
- "Already counted" belongs to a key: only a positive amount this key counted on a POST
  makes an object counted, and a refund without an amount costs what this key counted.
- Budgets nest. A key may spend from a budget; the budget may have a parent, and so on. Every
  admit checks the key's caps and each of those budgets' caps, and holds the same amount on
  all of them; every settlement, release, retry top-up or correction moves the same amounts on
  them as on the key. So a budget's counters are the sum of its keys' and child budgets'. One
  decision decides in one window for the key and its budgets: the latest any of them is in.
- A frozen budget refuses every call of every key under it (any ancestor frozen), like a
  revoked key, until it is unfrozen.
"""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from .. import policy
from ..money import format_usd
from ..records import frozen
from ..vendors.base import CostEstimate, PricingBasis, Refusal, RefusalKind
from .base import AdmitRequest, KeyRecord, KeySpec, Resolution, SealedSecret, SettleRequest

IDEMPOTENCY_MEMORY = timedelta(hours=24)  # how long Stripe and Resend remember a request's key
OPEN_STATES = ("pending", "unknown")


def window_of(now: datetime) -> str:
    """The daily cap's window: the UTC day. Caps reset at 00:00 UTC."""
    return now.astimezone(UTC).date().isoformat()


@frozen
class KeyCounters:
    """The money columns of a key's row (and of a budget's: the same columns, the same rules). A
    plan carries them whole, as they must be written."""

    spent: int = 0
    reserved: int = 0
    calls: int = 0
    day: str | None = None  # the window the day_* counters belong to
    day_spent: int = 0
    day_reserved: int = 0

    def in_window(self, window: str) -> "KeyCounters":
        """The counters seen from `window`: a later window starts its daily counters at 0; an
        earlier one (a clock behind the key's) sees the key's own, later window."""
        if self.day is not None and self.day >= window:
            return self
        return KeyCounters(self.spent, self.reserved, self.calls, window, 0, 0)

    def hold(self, total: int, daily: int, *, new_call: bool) -> "KeyCounters":
        # The constructor, not dataclasses.replace: this runs once per call, and replace costs 5x.
        return KeyCounters(self.spent, self.reserved + total, self.calls + int(new_call), self.day, self.day_spent,
                           self.day_reserved + daily)

    def move(self, reservation_day: str, *, spent: int, reserved: int) -> "KeyCounters":
        """Shift money between reserved and spent. The daily counters move only while the key is
        still in the reservation's window: a hold from a window that is over counts there no more."""
        same_window = self.day == reservation_day
        return KeyCounters(self.spent + spent, self.reserved + reserved, self.calls, self.day,
                           self.day_spent + (spent if same_window else 0),
                           self.day_reserved + (reserved if same_window else 0))


@frozen
class KeyState:
    key_id: str
    spec: KeySpec
    created_at: datetime
    revoked_at: datetime | None
    counters: KeyCounters

    def record(self, window: str, unknown_micros: int = 0) -> KeyRecord:
        """The key as callers see it from `window` (today's counters are 0 on a new day)."""
        counters = self.counters.in_window(window)
        return KeyRecord(
            key_id=self.key_id, spec=self.spec, created_at=self.created_at, revoked_at=self.revoked_at,
            spent_micros=counters.spent, reserved_micros=counters.reserved, calls=counters.calls,
            today_spent_micros=counters.day_spent if counters.day == window else 0,
            today_reserved_micros=counters.day_reserved if counters.day == window else 0,
            unknown_micros=unknown_micros)


@frozen
class BudgetState:
    """A budget's row: its caps, whether it is frozen, and its counters."""

    name: str
    parent: str | None
    daily_cap_micros: int | None
    total_cap_micros: int | None
    frozen_at: datetime | None
    counters: KeyCounters

    def with_counters(self, counters: KeyCounters) -> "BudgetState":
        return BudgetState(self.name, self.parent, self.daily_cap_micros, self.total_cap_micros, self.frozen_at,
                           counters)


def _each(budgets: tuple[BudgetState, ...], change) -> tuple[BudgetState, ...]:
    """The budgets with `change(counters)` applied to each: the key's change, on every budget."""
    return tuple(b.with_counters(change(b.counters)) for b in budgets)


def follow(budgets: tuple[BudgetState, ...], day: str, before: KeyCounters,
           after: KeyCounters) -> tuple[BudgetState, ...]:
    """The budgets after the key moved money on a reservation of `day` from `before` to `after`
    (a settlement, a release, a correction): the same amounts move on each budget, its daily
    counters only while it is still in that window (as the key's)."""
    spent, reserved = after.spent - before.spent, after.reserved - before.reserved
    return _each(budgets, lambda c: c.move(day, spent=spent, reserved=reserved))


@frozen
class ReservationState:
    id: int
    key_id: str
    endpoint: str
    created_at: datetime
    state: str  # pending | unknown | settled | released
    day: str
    reserved: int
    attempts_open: int  # attempts admitted on it whose answer has not been settled yet
    released_attempts: int  # attempts that answered "no money moved" while others were open
    actual: int | None = None


@frozen
class AdmitView:
    """What a store read for one admit, under the key's lock."""

    key: KeyState | None
    secret: SealedSecret | None
    existing: ReservationState | None  # this key's reservation with the same Idempotency-Key
    counted_micros: int | None  # the largest positive amount this key counted for estimate.object_ref
    budgets: tuple[BudgetState, ...] = ()  # the key's budget and its ancestors, nearest first


@frozen
class NewReservation:
    idempotency_key: str | None
    endpoint: str
    day: str
    reserved: int


@frozen
class ReservationChange:
    """A reservation's new values (retry attached, hold topped up or opened again)."""

    id: int
    state: str
    day: str
    reserved: int
    attempts_open: int
    released_attempts: int
    reopened: bool  # actual/settled_at/estimated are cleared


@frozen
class AdmitPlan:
    refusal: Refusal | None
    key: KeyRecord | None  # the key's balance before this call, for the gate's answer headers
    counters: KeyCounters | None = None  # write these to the key row (None: unchanged)
    new_reservation: NewReservation | None = None
    change: ReservationChange | None = None
    reservation_id: int | None = None  # the reservation attached to (None when new_reservation)
    opened: bool = False  # this call answers for the hold: its 4xx releases it
    reserved_micros: int = 0  # what this call added to holds
    basis: PricingBasis | None = None
    secret: SealedSecret | None = None
    budgets: tuple[BudgetState, ...] = ()  # write these budgets' counters (empty: unchanged)


UNKNOWN_KEY = Refusal(RefusalKind.UNKNOWN_KEY,
                      "This is not a vault key Keybrake knows. Ask the parent job for a key issued by "
                      "`keybrake issue` or POST /vault/keys.")


def admit(view: AdmitView, request: AdmitRequest, now: datetime) -> AdmitPlan:
    """Whether to let one call through, and what to reserve for it."""
    state = view.key
    if state is None:
        return AdmitPlan(UNKNOWN_KEY, None)
    # A clock reading behind the key's window, or a budget's (another replica decided later),
    # decides in that window: the window never moves back, and the key and its budgets share it.
    window = max(window_of(now), state.counters.day or "")
    budgets = view.budgets
    if budgets:  # (a key without a budget, the common case, pays for none of this)
        window = max(window, *(b.counters.day or "" for b in budgets))
        budgets = _each(budgets, lambda c: c.in_window(window))
    counters = state.counters.in_window(window)
    key = state.record(window)
    call = request.call
    refusal = (policy.key_refusal(key, call.vendor, call.method, call.path, now)
               or (budgets and frozen_refusal(key, budgets))
               or policy.account_refusal(key, view.secret, request.account_ref)
               or policy.connected_account_refusal(key, request.connected_account))
    estimate = request.estimate
    if refusal is None and request.pricing_refusal is not None:
        if request.pricing_refusal.kind is RefusalKind.UNPRICED and key.spec.allow_unpriced:
            estimate = None  # forwarded with nothing reserved; counted from the response
        else:
            refusal = request.pricing_refusal
    if refusal is not None:
        return AdmitPlan(refusal, key)

    existing = view.existing
    if existing is not None and not same_attempt(existing, f"{call.method} {call.path}", now):
        existing = None
    if existing is not None:
        return _admit_retry(view, existing, key, counters, budgets, estimate, window)

    cost, basis, refusal = resolve_cost(key, estimate, view.counted_micros)
    refusal = refusal or caps_refusal(key, budgets, total_extra=cost, daily_extra=cost, new_call=True)
    if refusal is not None:
        return AdmitPlan(refusal, key)
    return AdmitPlan(
        None, key, counters=counters.hold(cost, cost, new_call=True),
        new_reservation=NewReservation(_idempotency_key(request, view), f"{call.method} {call.path}", window, cost),
        opened=True, reserved_micros=cost, basis=basis, secret=view.secret,
        budgets=_each(budgets, lambda c: c.hold(cost, cost, new_call=True)) if budgets else ())


def _idempotency_key(request: AdmitRequest, view: AdmitView) -> str | None:
    # A key the vendor has forgotten (or used for another call) is not attachable: the new
    # reservation goes without it, as a call of its own.
    if view.existing is not None:
        return None
    return request.call.idempotency_key


def same_attempt(reservation: ReservationState, endpoint: str, now: datetime) -> bool:
    """Whether a request with the same Idempotency-Key retries this reservation's call.

    Vendors keep idempotency keys for 24 hours and scope them to one request; past that, or on
    another endpoint, the same key is a new call.
    """
    return reservation.endpoint == endpoint and reservation.created_at > now - IDEMPOTENCY_MEMORY


def _admit_retry(view: AdmitView, existing: ReservationState, key: KeyRecord, counters: KeyCounters,
                 budgets: tuple[BudgetState, ...], estimate: CostEstimate | None, window: str) -> AdmitPlan:
    """A retry of a call already reserved (same key, endpoint and Idempotency-Key).

    - settled: attached for nothing (the vendor replays the saved result, or refuses other
      parameters);
    - released (every attempt said no money moved): the hold opens again, checked like a new call;
    - pending or unknown: attached and counted as one more attempt in flight; the hold grows to
      this call's cost if that is more, and moves into the current window, under the caps.
    """
    if existing.state == "settled":
        return AdmitPlan(None, key, reservation_id=existing.id, secret=view.secret)
    cost, basis, refusal = resolve_cost(key, estimate, view.counted_micros)
    if existing.state == "released":
        refusal = refusal or caps_refusal(key, budgets, total_extra=cost, daily_extra=cost, new_call=False)
        if refusal is not None:
            return AdmitPlan(refusal, key)
        change = ReservationChange(existing.id, "pending", window, cost, attempts_open=1, released_attempts=0,
                                   reopened=True)
        return AdmitPlan(None, key, counters=counters.hold(cost, cost, new_call=False), change=change,
                         reservation_id=existing.id, opened=True, reserved_micros=cost, basis=basis,
                         secret=view.secret, budgets=_each(budgets, lambda c: c.hold(cost, cost, new_call=False)))
    extra = max(0, cost - existing.reserved)
    held = existing.reserved + extra
    moves_window = existing.day != window
    daily_extra = held if moves_window else extra
    if refusal is None and (extra or daily_extra):
        refusal = caps_refusal(key, budgets, total_extra=extra, daily_extra=daily_extra, new_call=False)
    if refusal is not None:
        return AdmitPlan(refusal, key)

    def top_up(counters: KeyCounters) -> KeyCounters:
        if moves_window:  # the old window no longer counts it; the current one counts all of it
            counters = counters.move(existing.day, spent=0, reserved=-existing.reserved)
            return counters.hold(held, held, new_call=False)
        return counters.hold(extra, extra, new_call=False)

    change = ReservationChange(existing.id, existing.state, window, held, existing.attempts_open + 1,
                               existing.released_attempts, reopened=False)
    return AdmitPlan(None, key, counters=top_up(counters), change=change, reservation_id=existing.id,
                     reserved_micros=extra, basis=basis, secret=view.secret, budgets=_each(budgets, top_up))


def resolve_cost(key: KeyRecord, estimate: CostEstimate | None,
                 counted_micros: int | None) -> tuple[int, PricingBasis, Refusal | None]:
    """The amount to reserve, and how the response should be counted against it.

    counted_micros: the largest positive amount this key counted on a POST for the estimate's
    object. A GET or any other $0 call never makes an object counted, and another key's count
    is not this key's: without one, the call is unpriced.
    """
    if estimate is None or estimate.basis is PricingBasis.FIXED:
        return (estimate.usd_micros if estimate else 0), PricingBasis.FIXED, None
    if counted_micros:
        if estimate.basis is PricingBasis.ALREADY_COUNTED:
            return 0, PricingBasis.ALREADY_COUNTED, None
        return counted_micros, PricingBasis.FIXED, None
    if key.spec.allow_unpriced:
        return 0, PricingBasis.FIXED, None
    return 0, PricingBasis.FIXED, Refusal(
        RefusalKind.UNPRICED,
        f"Keybrake cannot price this call: vault key {key.key_id} did not create {estimate.object_ref} "
        "through Keybrake, so its amount is unknown. A key issued with allow_unpriced forwards it "
        "anyway and counts it from the response.")


KEY_CAP = "key"  # the `x-keybrake-cap` value of a key's own cap; a budget's is "budget:NAME"


def caps_refusal(key: KeyRecord, budgets: tuple[BudgetState, ...], *, total_extra: int, daily_extra: int,
                 new_call: bool) -> Refusal | None:
    """Whether adding these holds would break the key's caps or any of its budgets' (nearest first)."""
    refusal = cap_refusal(key, total_extra=total_extra, daily_extra=daily_extra, new_call=new_call)
    for budget in budgets:
        if refusal is not None:
            break
        refusal = budget_cap_refusal(key, budget, total_extra=total_extra, daily_extra=daily_extra)
    return refusal


def cap_refusal(key: KeyRecord, *, total_extra: int, daily_extra: int, new_call: bool) -> Refusal | None:
    """Whether adding these holds would break a cap. `key` holds the current totals.

    new_call=False: more money for a call already counted (a retry), so max_calls does not apply.
    """
    spec = key.spec
    if new_call and spec.max_calls is not None and key.calls + 1 > spec.max_calls:
        return Refusal(RefusalKind.MAX_CALLS_EXCEEDED,
                       f"Keybrake cap reached for vault key {key.key_id}{_label(key)}: "
                       f"it allows {spec.max_calls} calls and has made {key.calls}.", cap=KEY_CAP)
    broken = _broken_cap(spec.total_cap_micros, spec.daily_cap_micros, key.spent_micros, key.reserved_micros,
                         key.today_spent_micros, key.today_reserved_micros, total_extra, daily_extra)
    if broken is None:
        return None
    return Refusal(RefusalKind.CAP_EXCEEDED, f"Keybrake cap reached for vault key {key.key_id}{_label(key)}: "
                                             f"{broken}.", cap=KEY_CAP)


def budget_cap_refusal(key: KeyRecord, budget: BudgetState, *, total_extra: int,
                       daily_extra: int) -> Refusal | None:
    """Whether adding these holds would break one of the budget's caps. Its counters are in the
    decision's window."""
    c = budget.counters
    broken = _broken_cap(budget.total_cap_micros, budget.daily_cap_micros, c.spent, c.reserved, c.day_spent,
                         c.day_reserved, total_extra, daily_extra)
    if broken is None:
        return None
    return Refusal(RefusalKind.CAP_EXCEEDED,
                   f"Keybrake cap reached for budget {budget.name}, which vault key {key.key_id}{_label(key)} "
                   f"spends from: {broken}.", cap=f"budget:{budget.name}")


def _broken_cap(total_cap: int | None, daily_cap: int | None, spent: int, reserved: int, day_spent: int,
                day_reserved: int, total_extra: int, daily_extra: int) -> str | None:
    """The first cap these holds would break, described; None when both hold."""
    checks = (("total", total_cap, spent, reserved, total_extra),
              ("daily", daily_cap, day_spent, day_reserved, daily_extra))
    for which, cap, spent_so_far, reserved_so_far, extra in checks:
        if cap is not None and spent_so_far + reserved_so_far + extra > cap:
            return (f"{which} cap ${format_usd(cap)}, spent ${format_usd(spent_so_far)}, "
                    f"reserved ${format_usd(reserved_so_far)}, this call ${format_usd(extra)}")
    return None


def frozen_refusal(key: KeyRecord, budgets: tuple[BudgetState, ...]) -> Refusal | None:
    """A key under a frozen budget (its own or any ancestor) is refused, like a revoked key."""
    for budget in budgets:
        if budget.frozen_at is not None:
            return Refusal(RefusalKind.BUDGET_FROZEN,
                           f"Keybrake budget {budget.name} was frozen at {policy.iso(budget.frozen_at)}, so vault "
                           f"key {key.key_id} under it is refused. Ask the operator (`keybrake budget unfreeze "
                           f"{budget.name}`).")
    return None


def _label(key: KeyRecord) -> str:
    return f" (label {key.spec.label})" if key.spec.label else ""


# --- settling -------------------------------------------------------------------------------------

@frozen
class SettlePlan:
    counters: KeyCounters | None  # write these to the key row (None: unchanged)
    state: str  # the reservation's new state
    actual: int | None  # its actual amount, for a settled one
    attempts_open: int
    released_attempts: int
    closed: bool  # settled or released now: stamp settled_at
    estimated: bool  # settled at the estimate: the vendor had no price yet
    outcome: str  # for the audit row
    counted: int  # what this answer added to spent, for the audit row
    budgets: tuple[BudgetState, ...] = ()  # write these budgets' counters (empty: unchanged)


def settle(reservation: ReservationState, counters: KeyCounters, request: SettleRequest,
           budgets: tuple[BudgetState, ...] = ()) -> SettlePlan:
    """Apply one attempt's answer to its reservation, and the same money moves on its budgets.

    The caller settles each audit row once: a settlement retried after a commit whose answer
    was lost must not come here again.
    """
    plan = _settle_key(reservation, counters, request)
    if plan.counters is None or not budgets:
        return plan
    return replace(plan, budgets=follow(budgets, reservation.day, counters, plan.counters))


def _settle_key(reservation: ReservationState, counters: KeyCounters, request: SettleRequest) -> SettlePlan:
    resolution = request.resolution
    attempts = max(0, reservation.attempts_open - 1)
    released_attempts = reservation.released_attempts
    state, hold = reservation.state, reservation.reserved
    unchanged = SettlePlan(None, state, reservation.actual, attempts, released_attempts, False, False,
                           "already_" + state if state not in OPEN_STATES else resolution.value, 0)

    if state == "released":
        if resolution in (Resolution.SETTLE, Resolution.UNKNOWN):
            # Money moved after all (an attempt nobody was waiting for): never under-count.
            return _count_late_answer(reservation, counters, request, attempts)
        return unchanged
    if state == "settled":
        return unchanged

    if resolution is Resolution.SETTLE:
        if replays_an_older_call(request, state, attempts):
            actual, estimated = 0, False
        else:
            actual, estimated = (hold, True) if request.actual_micros is None else (request.actual_micros, False)
        return SettlePlan(counters.move(reservation.day, spent=actual, reserved=-hold), "settled", actual, attempts,
                          released_attempts, True, estimated, "settled", actual)
    if resolution is Resolution.UNKNOWN:
        return SettlePlan(None, "unknown", None, attempts, released_attempts, False, False, "unknown", 0)
    if resolution is Resolution.RELEASE:
        released_attempts += 1
        if request.replayed:  # the vendor's saved answer to the first attempt speaks for all of them
            return _released(reservation, counters, released_attempts)
    elif attempts > 0 or not released_attempts:  # LEAVE, and the hold is not ours to release yet
        return replace(unchanged, outcome=Resolution.LEAVE.value)
    if attempts > 0 or state == "unknown":
        # Another attempt may still move money, or one already may have: the hold stays counted.
        return SettlePlan(None, state, None, attempts, released_attempts, False, False, "released_attempt", 0)
    return _released(reservation, counters, released_attempts)


def replays_an_older_call(request: SettleRequest, state: str, other_attempts_open: int) -> bool:
    """Whether a success the vendor replayed is of a call made before this reservation existed
    (a call without Keybrake, or under the same Idempotency-Key more than a day ago): nothing
    moved now. Only when the attempt that opened the hold gets it, and no other attempt of the
    reservation could have made it: none is still open, and none was left unknown. (One that
    charged and answered has settled the reservation already.)"""
    return request.replayed and request.opened and state == "pending" and other_attempts_open == 0


def _released(reservation: ReservationState, counters: KeyCounters, released_attempts: int) -> SettlePlan:
    return SettlePlan(counters.move(reservation.day, spent=0, reserved=-reservation.reserved), "released", None, 0,
                      released_attempts, True, False, "released", 0)


def _count_late_answer(reservation: ReservationState, counters: KeyCounters, request: SettleRequest,
                       attempts: int) -> SettlePlan:
    if request.resolution is Resolution.SETTLE:
        actual = reservation.reserved if request.actual_micros is None else request.actual_micros
        return SettlePlan(counters.move(reservation.day, spent=actual, reserved=0), "settled", actual, attempts, 0,
                          True, request.actual_micros is None, "settled", actual)
    return SettlePlan(counters.move(reservation.day, spent=0, reserved=reservation.reserved), "unknown", None,
                      attempts, 0, False, False, "unknown", 0)


def balance_after(key: KeyRecord, *, opened: bool, reserved_micros: int, resolution: Resolution,
                  actual_micros: int | None, replayed: bool = False) -> KeyRecord:
    """The key's balance once this call settles, from the snapshot taken when it was admitted.

    For the answer's headers only: the gate does not wait for the settlement to commit. (A
    replay to the attempt that opened the hold is shown as nothing moved, its usual meaning; the
    ledger counts it if a retry of the reservation made it: replays_an_older_call.)
    """
    if not opened:
        return key  # a retry: its hold was already in the snapshot
    if resolution is Resolution.SETTLE:
        spent = _spent_by_answer(reserved_micros, actual_micros, replayed)
        return replace(key, spent_micros=key.spent_micros + spent, today_spent_micros=key.today_spent_micros + spent)
    if resolution is Resolution.UNKNOWN:
        return replace(key, reserved_micros=key.reserved_micros + reserved_micros,
                       today_reserved_micros=key.today_reserved_micros + reserved_micros)
    return key


def _spent_by_answer(reserved_micros: int, actual_micros: int | None, replayed: bool) -> int:
    """What a settled answer of the attempt that opened the hold spends, as the headers show it."""
    if replayed:
        return 0
    return reserved_micros if actual_micros is None else actual_micros


def headroom_after(headroom: int | None, *, opened: bool, reserved_micros: int, resolution: Resolution,
                   actual_micros: int | None, replayed: bool = False) -> int | None:
    """A budget chain's headroom once this call settles, from the headroom before its hold (as
    `balance_after`, for the answer's headers only)."""
    if headroom is None or not opened:
        return headroom
    if resolution is Resolution.SETTLE:
        used = _spent_by_answer(reserved_micros, actual_micros, replayed)
    elif resolution is Resolution.UNKNOWN:
        used = reserved_micros
    else:
        used = 0
    return max(0, headroom - used)


# --- corrections ----------------------------------------------------------------------------------

def correct_price(reservation: ReservationState, counters: KeyCounters, final_micros: int) -> KeyCounters:
    """Replace a settled estimate with the vendor's final price."""
    return counters.move(reservation.day, spent=final_micros - (reservation.actual or 0), reserved=0)


def resolve_by_hand(reservation: ReservationState, counters: KeyCounters, actual_micros: int | None) -> KeyCounters:
    """Settle an open hold at the operator's word: at `actual_micros`, or released when None."""
    return counters.move(reservation.day, spent=actual_micros or 0, reserved=-reservation.reserved)
