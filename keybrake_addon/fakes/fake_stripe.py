"""A stdlib-only fake of the Stripe REST API, for end-to-end tests, `keybrake demo` and benchmarks.

Why: Keybrake sits between a client and Stripe, so its tests need an upstream that speaks enough
of Stripe's wire format (form bodies, Bearer/Basic auth, error shapes) for the official SDK to run
unchanged; that counts the money that *actually* moved (so a test can assert a cap let exactly N
minor units through, and that retries did not move money twice); that implements Stripe's
idempotency semantics, which a retrying proxy leans on; and that can fail *after* moving money
(a 500 or a dropped connection), the case where the caller cannot tell whether the charge
happened. Faults come from a seeded RNG so runs repeat.

All state sits behind one lock, and each request's whole effect (auth, idempotency lookup,
mutation, saving the replay, fault roll) happens in one short critical section, so concurrent
duplicates of one Idempotency-Key cannot both move money. Latency and socket I/O stay outside.

The HTTP server, lifecycle and request recording live in `_http.FakeServer`, shared with the
other fakes; this module holds only Stripe's auth, idempotency, faults, routes and money state.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import random
import string
import time
from collections.abc import Callable
from typing import Any

from ._http import FakeServer, Headers, ReceivedRequest, Reply, VendorError, json_reply, run_main

__all__ = ["DEFAULT_SECRET", "DECLINING_PAYMENT_METHODS", "FakeStripe", "ReceivedRequest", "StripeError", "main"]

DEFAULT_SECRET = "sk_test_fake_upstream_secret"
DECLINING_PAYMENT_METHODS = frozenset({"pm_card_chargeDeclined", "tok_chargeDeclined"})
_ALNUM = string.ascii_letters + string.digits
_ID_RNG = random.Random()  # ids get their own RNG so they never consume the seeded fault RNG
_CONFIRMABLE = ("requires_payment_method", "requires_confirmation", "requires_action")
_CANCELABLE = (*_CONFIRMABLE, "requires_capture", "processing")

Obj = dict[str, Any]
Form = dict[str, str]


def _new_id(prefix: str, n: int = 24) -> str:
    return prefix + "".join(_ID_RNG.choices(_ALNUM, k=n))


class StripeError(VendorError):
    """A Stripe-shaped error reply, raised by endpoint code and rendered by the dispatcher."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", **fields: Any):
        super().__init__(status, {"error": {"type": type_, "message": message,
                                            **{k: v for k, v in fields.items() if v is not None}}},
                         message=message)


class FakeStripe(FakeServer):
    """An in-process fake Stripe server (see the module docstring for why).

    Typical use::

        with FakeStripe() as fake:
            client = stripe.StripeClient(fake.secret, base_addresses={"api": fake.url})
            ...
            assert fake.money_moved_minor == 2000
    """

    vendor = "Stripe"
    request_id_header = "Request-Id"

    def __init__(self, secret: str = DEFAULT_SECRET, host: str = "127.0.0.1", port: int = 0, *,
                 fail_after_charge_rate: float = 0.0, drop_after_charge_rate: float = 0.0,
                 seed: int = 0, latency_s: float = 0.0) -> None:
        super().__init__(host, port, latency_s)
        self.secret = secret
        self.fail_after_charge_rate = fail_after_charge_rate
        self.drop_after_charge_rate = drop_after_charge_rate
        self._rng = random.Random(seed)  # fault rolls only, always under the lock
        self._objects: dict[str, Obj] = {}
        self._created: list[str] = []
        self._pi_refunded: dict[str, int] = {}
        # (secret, key) -> (method/path/params fingerprint, saved reply, original request id)
        self._idempotency: dict[tuple[str, str], tuple[tuple[Any, ...], int, bytes, str]] = {}
        self._moved_total = 0
        self._moved_by_currency: dict[str, int] = {}
        self._net_by_currency: dict[str, int] = {}
        get = self._get
        table: list[tuple[str, str, Callable[..., Obj]]] = [
            ("POST", r"/v1/payment_intents", self._pi_create),
            ("GET", r"/v1/payment_intents/([^/]+)", lambda f, i: get("payment_intent", i)),
            ("POST", r"/v1/payment_intents/([^/]+)", self._pi_update),
            ("POST", r"/v1/payment_intents/([^/]+)/confirm", self._pi_confirm),
            ("POST", r"/v1/payment_intents/([^/]+)/capture", self._pi_capture),
            ("POST", r"/v1/payment_intents/([^/]+)/cancel", self._pi_cancel),
            ("POST", r"/v1/charges", self._charge_create),
            ("GET", r"/v1/charges/([^/]+)", lambda f, i: get("charge", i)),
            ("POST", r"/v1/refunds", self._refund_create),
            ("POST", r"/v1/transfers", self._transfer_create),
            ("POST", r"/v1/payouts", self._payout_create),
            ("POST", r"/v1/customers", self._customer_create),
            ("GET", r"/v1/customers/([^/]+)", lambda f, i: get("customer", i)),
            ("GET", r"/v1/balance", self._balance),
        ]
        self._set_routes(table)

    # ----- observations for tests (copies, taken under the lock) -----------------------------

    @property
    def money_moved_minor(self) -> int:
        """Minor units really moved (captures, charges, refunds, transfers, payouts); replays add 0."""
        return self._locked(lambda: self._moved_total)

    @property
    def money_moved_by_currency(self) -> dict[str, int]:
        return self._locked(lambda: dict(self._moved_by_currency))

    @property
    def objects_created(self) -> list[str]:
        """Ids of every object created, in order (replays create nothing)."""
        return self._locked(lambda: list(self._created))

    # ----- request pipeline ------------------------------------------------------------------

    def _new_request_id(self) -> str:
        return _new_id("req_", 14)

    def _unknown_route(self, method: str, path: str) -> StripeError:
        return StripeError(404, f"Unrecognized request URL ({method}: {path}). Please see "
                           "https://stripe.com/docs or we can help at https://support.stripe.com/.")

    def _authorized(self, auth: str) -> bool:
        """Bearer <secret>, or Basic with the secret as user and an empty password (as Stripe)."""
        scheme, _, cred = auth.partition(" ")
        presented, password = cred.strip(), ""
        if scheme.lower() == "basic":
            try:
                raw = base64.b64decode(presented, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return False
            presented, _, password = raw.partition(":")
        elif scheme.lower() != "bearer":
            return False
        return not password and hmac.compare_digest(presented.encode(), self.secret.encode())

    def _dispatch(self, req: ReceivedRequest, request_id: str) -> Reply:
        """Auth, idempotency lookup, mutation, saving the replay and the fault roll, atomically."""
        if not self._authorized(req.authorization):  # never echo the presented key back
            msg = "Invalid API Key provided" if req.authorization else (
                "You did not provide an API key. Provide it in the Authorization header, "
                "using Bearer auth.")
            err = StripeError(401, msg, code="api_key_invalid")
            return json_reply(401, err.body, (("WWW-Authenticate", 'Basic realm="Stripe"'),))
        method, path, form = req.method, req.path, req.form
        key = req.headers.get("idempotency-key") if method == "POST" else None
        fingerprint = (method, path, tuple(sorted(form.items())))
        hdrs: Headers = ()
        if key is not None and (saved := self._idempotency.get((self.secret, key))):
            if saved[0] != fingerprint:
                raise StripeError(400, (
                    "Keys for idempotent requests can only be used with the same parameters "
                    f"they were first used with. Try using a key other than '{key}' if you "
                    "meant to execute a different request."), "idempotency_error")
            return Reply(saved[1], saved[2], (("Idempotency-Key", key), ("Idempotent-Replayed", "true"),
                                              ("Original-Request", saved[3])))
        moved_before = self._moved_total
        try:
            status, payload = 200, self._route(method, path, form)
        except StripeError as exc:
            status, payload = exc.status, exc.body
        body = json.dumps(payload).encode()
        # Like Stripe, save what executed (successes, declines) but not validation errors.
        if key is not None and (status < 300 or status == 402):
            self._idempotency[(self.secret, key)] = (fingerprint, status, body, request_id)
            hdrs = (("Idempotency-Key", key),)
        if status < 300 and self._moved_total > moved_before:
            if self.fail_after_charge_rate > 0 and self._rng.random() < self.fail_after_charge_rate:
                # no Stripe-Should-Retry header: the SDK retries 5xx by default
                err = StripeError(500, "An unknown error occurred (FakeStripe injected this 500 after "
                                  "the money moved; retry with the same Idempotency-Key).", "api_error")
                return json_reply(500, err.body, hdrs)
            if self.drop_after_charge_rate > 0 and self._rng.random() < self.drop_after_charge_rate:
                return Reply(0, b"", drop=True)  # vanish without a response byte, after the money moved
        return Reply(status, body, hdrs)

    # ----- helpers (called with the lock held) -----------------------------------------------

    def _store(self, prefix: str, kind: str, form: Form, **fields: Any) -> Obj:
        obj = {"id": _new_id(prefix), "object": kind, **fields, "metadata": _metadata(form),
               "livemode": False, "created": int(time.time())}
        self._objects[obj["id"]] = obj
        self._created.append(obj["id"])
        return obj

    def _get(self, kind: str, obj_id: str) -> Obj:
        obj = self._objects.get(obj_id)
        if obj is None or obj["object"] != kind:
            raise StripeError(404, f"No such {kind}: '{obj_id}'", param="id", code="resource_missing")
        return obj

    def _move(self, currency: str, amount: int, sign: int) -> None:
        """Record real money movement; `sign` only affects the balance (+1 in, -1 out)."""
        self._moved_total += amount
        self._moved_by_currency[currency] = self._moved_by_currency.get(currency, 0) + amount
        self._net_by_currency[currency] = self._net_by_currency.get(currency, 0) + sign * amount

    # ----- payment intents -------------------------------------------------------------------

    def _pi_create(self, form: Form) -> Obj:
        amount, currency, pm = _amount(form, "amount"), _currency(form), form.get("payment_method")
        pi = self._store("pi_", "payment_intent", form, amount=amount, currency=currency,
                         status="requires_confirmation" if pm else "requires_payment_method",
                         amount_received=0, amount_capturable=0, payment_method=pm or None,
                         capture_method=form.get("capture_method") or "automatic",
                         customer=form.get("customer"), description=form.get("description"),
                         last_payment_error=None, canceled_at=None, cancellation_reason=None)
        self._pi_refunded[pi["id"]] = 0
        if form.get("confirm") == "true":
            self._pi_do_confirm(pi, pm)
        return pi

    def _pi_do_confirm(self, pi: Obj, pm: str | None) -> None:
        """Money moves here, unless capture is manual or the card declines."""
        # Lenient: confirming with no payment method at all behaves like Stripe's pm_card_visa.
        pi["payment_method"] = pm or pi["payment_method"] or "pm_card_visa"
        if pi["payment_method"] in DECLINING_PAYMENT_METHODS:
            pi["status"] = "requires_payment_method"
            pi["last_payment_error"] = {"type": "card_error", "code": "card_declined",
                                        "decline_code": "generic_decline",
                                        "message": "Your card was declined."}
            raise _declined("payment_intent", pi)
        pi["last_payment_error"] = None
        if pi["capture_method"] == "manual":
            pi.update(status="requires_capture", amount_capturable=pi["amount"])
        else:
            pi.update(status="succeeded", amount_received=pi["amount"])
            self._move(pi["currency"], pi["amount"], +1)

    def _pi_update(self, form: Form, pi_id: str) -> Obj:
        pi = self._get("payment_intent", pi_id)
        if ("amount" in form or "currency" in form) and pi["status"] not in _CONFIRMABLE:
            raise _unexpected_state("update the amount of", pi)
        fields = ("description", "customer", "payment_method")
        changes: Obj = {f: form[f] or None for f in fields if f in form}
        if "amount" in form:
            changes["amount"] = _amount(form, "amount")  # validate everything before mutating
        if "currency" in form:
            changes["currency"] = _currency(form)
        pi.update(changes)
        if pi["payment_method"] and pi["status"] == "requires_payment_method":
            pi["status"] = "requires_confirmation"
        pi["metadata"] = _metadata(form, pi["metadata"])
        return pi

    def _pi_confirm(self, form: Form, pi_id: str) -> Obj:
        pi = self._get("payment_intent", pi_id)
        if pi["status"] not in _CONFIRMABLE:
            raise _unexpected_state("confirm", pi)
        pi["capture_method"] = form.get("capture_method") or pi["capture_method"]
        self._pi_do_confirm(pi, form.get("payment_method"))
        return pi

    def _pi_capture(self, form: Form, pi_id: str) -> Obj:
        pi = self._get("payment_intent", pi_id)
        if pi["status"] != "requires_capture":
            raise _unexpected_state("capture", pi)
        amount = _amount(form, "amount_to_capture", required=False) or pi["amount_capturable"]
        if amount > pi["amount_capturable"]:
            raise StripeError(400, "The amount to capture exceeds the capturable amount.",
                              param="amount_to_capture", code="amount_too_large")
        pi.update(status="succeeded", amount_received=amount, amount_capturable=0)
        self._move(pi["currency"], amount, +1)
        return pi

    def _pi_cancel(self, form: Form, pi_id: str) -> Obj:
        pi = self._get("payment_intent", pi_id)
        if pi["status"] not in _CANCELABLE:
            raise _unexpected_state("cancel", pi)
        pi.update(status="canceled", amount_capturable=0, canceled_at=int(time.time()),
                  cancellation_reason=form.get("cancellation_reason") or "requested_by_customer")
        return pi

    # ----- charges, refunds, transfers, payouts, customers, balance --------------------------

    def _charge_create(self, form: Form) -> Obj:
        amount, currency = _amount(form, "amount"), _currency(form)
        captured = form.get("capture") != "false"
        ch = self._store("ch_", "charge", form, amount=amount, currency=currency,
                         amount_captured=amount if captured else 0, amount_refunded=0,
                         refunded=False, captured=captured, status="succeeded", paid=True,
                         customer=form.get("customer"), description=form.get("description"))
        if (form.get("source") or form.get("payment_method")) in DECLINING_PAYMENT_METHODS:
            ch.update(status="failed", paid=False, captured=False, amount_captured=0)
            raise _declined("charge", ch)
        if captured:
            self._move(currency, amount, +1)
        return ch

    def _refund_create(self, form: Form) -> Obj:
        """`amount` defaults to what is still refundable on the charge or PaymentIntent."""
        charge_id, pi_id = form.get("charge"), form.get("payment_intent")
        if charge_id:
            target = self._get("charge", charge_id)
            refundable = target["amount_captured"] - target["amount_refunded"]
        elif pi_id:
            target = self._get("payment_intent", pi_id)
            refundable = target["amount_received"] - self._pi_refunded[pi_id]
        else:
            raise StripeError(400, "One of the following params should be provided for this "
                              "request: payment_intent or charge.", param="charge",
                              code="parameter_missing")
        if refundable <= 0:
            raise StripeError(400, f"{target['object']} {target['id']} has no refundable amount "
                              "left.", code="charge_already_refunded")
        amount = _amount(form, "amount", required=False) or refundable
        if amount > refundable:
            raise StripeError(400, f"Refund amount ({amount}) is greater than the unrefunded "
                              f"amount ({refundable}).", param="amount", code="amount_too_large")
        if charge_id:
            target["amount_refunded"] += amount
            target["refunded"] = target["amount_refunded"] == target["amount_captured"]
        else:
            self._pi_refunded[target["id"]] += amount
        self._move(target["currency"], amount, -1)
        return self._store("re_", "refund", form, amount=amount, currency=target["currency"],
                           status="succeeded", charge=charge_id, payment_intent=pi_id,
                           reason=form.get("reason"))

    def _transfer_create(self, form: Form) -> Obj:
        amount, currency, dest = _amount(form, "amount"), _currency(form), _required(form, "destination")
        self._move(currency, amount, -1)
        return self._store("tr_", "transfer", form, amount=amount, currency=currency,
                           destination=dest, amount_reversed=0, reversed=False)

    def _payout_create(self, form: Form) -> Obj:
        amount, currency = _amount(form, "amount"), _currency(form)
        self._move(currency, amount, -1)
        return self._store("po_", "payout", form, amount=amount, currency=currency, status="pending",
                           method=form.get("method") or "standard",
                           arrival_date=int(time.time()) + 86400)

    def _customer_create(self, form: Form) -> Obj:
        return self._store("cus_", "customer", form, email=form.get("email"), name=form.get("name"),
                           description=form.get("description"))

    def _balance(self, form: Form) -> Obj:
        net = sorted((self._net_by_currency or {"usd": 0}).items())
        return {"object": "balance", "livemode": False,
                "available": [{"amount": a, "currency": c, "source_types": {"card": a}} for c, a in net],
                "pending": [{"amount": 0, "currency": c, "source_types": {"card": 0}} for c, _ in net]}


# ----- form helpers: Stripe-shaped 400s for bad params ---------------------------------------


def _required(form: Form, name: str) -> str:
    value = form.get(name)
    if not value:
        raise StripeError(400, f"Missing required param: {name}.", param=name, code="parameter_missing")
    return value


def _amount(form: Form, name: str, *, required: bool = True) -> int:
    """A positive integer amount; 0 means "absent" when not required."""
    if not form.get(name) and not required:
        return 0
    raw = _required(form, name)
    if not raw.isdigit() or int(raw) < 1:
        raise StripeError(400, f"Invalid positive integer: {raw}", param=name,
                          code="parameter_invalid_integer")
    return int(raw)


def _currency(form: Form) -> str:
    cur = _required(form, "currency").lower()
    if len(cur) != 3 or not cur.isalpha():
        raise StripeError(400, f"Invalid currency: {cur}.", param="currency", code="parameter_invalid_string")
    return cur


def _metadata(form: Form, current: Obj | None = None) -> Obj:
    """Merge `metadata[k]=v` params; an empty value unsets the key, as on Stripe."""
    meta = dict(current or {})
    for k, v in form.items():
        if k.startswith("metadata[") and k.endswith("]"):
            if v:
                meta[k[9:-1]] = v
            else:
                meta.pop(k[9:-1], None)
    return meta


def _declined(kind: str, obj: Obj) -> StripeError:
    return StripeError(402, "Your card was declined.", "card_error", code="card_declined",
                       decline_code="generic_decline", **{kind: dict(obj)})


def _unexpected_state(action: str, pi: Obj) -> StripeError:
    return StripeError(400, f"You cannot {action} this PaymentIntent because it has a status of "
                       f"{pi['status']}.", code="payment_intent_unexpected_state")


def main(argv: list[str] | None = None) -> int:
    """Serve in the foreground (for `keybrake demo`, benchmarks, poking) until SIGINT/SIGTERM."""
    return run_main(FakeStripe, 12111, argv, ("--secret", {"default": DEFAULT_SECRET}),
                    ("--fail-after-charge-rate", {"type": float, "default": 0.0}),
                    ("--drop-after-charge-rate", {"type": float, "default": 0.0}),
                    ("--seed", {"type": int, "default": 0}))


if __name__ == "__main__":
    raise SystemExit(main())
