import { AbortTaskRunError, logger, task } from "@trigger.dev/sdk";
import Stripe from "stripe";
import { keybrakeRefusal, stripeForVaultKey } from "../keybrake";

export interface ChargeCustomerPayload {
  /** The parent run's capped Keybrake key (`sk_kb_...`), never the real Stripe secret. */
  vaultKey: string;
  /** Amount in cents. */
  amount: number;
  currency?: string;
  /** A PaymentMethod the customer has saved, e.g. `pm_card_visa` in test mode. */
  paymentMethod: string;
  customerId?: string;
  description?: string;
}

export interface ChargeCustomerOutput {
  paymentIntentId: string;
  status: Stripe.PaymentIntent.Status;
  amount: number;
  currency: string;
}

/** Marks the abort message of a child stopped by the cap, so the parent can tell it apart. */
export const CAP_HIT = "keybrake_cap_exceeded";

export const chargeCustomer = task({
  id: "charge-customer",
  retry: { maxAttempts: 3, factor: 2, minTimeoutInMs: 1_000, maxTimeoutInMs: 10_000, randomize: true },
  run: async (payload: ChargeCustomerPayload, { ctx }): Promise<ChargeCustomerOutput> => {
    // Forward proxy (https-proxy-agent + NODE_EXTRA_CA_CERTS) or base-URL route: see ../keybrake.ts.
    const stripe = stripeForVaultKey(payload.vaultKey);
    try {
      const intent = await stripe.paymentIntents.create(
        {
          amount: payload.amount,
          currency: payload.currency ?? "usd",
          payment_method: payload.paymentMethod,
          customer: payload.customerId,
          description: payload.description,
          confirm: true,
          automatic_payment_methods: { enabled: true, allow_redirects: "never" },
          metadata: { trigger_run_id: ctx.run.id },
        },
        // One run, one charge: a Trigger.dev retry of this run replays the same request at Stripe
        // (and Keybrake does not reserve twice for one Idempotency-Key).
        { idempotencyKey: `charge-customer/${ctx.run.id}` },
      );
      return { paymentIntentId: intent.id, status: intent.status, amount: intent.amount, currency: intent.currency };
    } catch (error) {
      // The parent's budget is spent. Keybrake answered 429 with Stripe-Should-Retry: false, so
      // stripe-node did not retry (despite maxNetworkRetries); tell Trigger.dev not to retry either.
      if (error instanceof Stripe.errors.StripeRateLimitError && error.headers?.["x-keybrake-cap-hit"] === "true") {
        logger.warn("Keybrake cap reached; not retrying", { message: error.message });
        throw new AbortTaskRunError(`${CAP_HIT}: ${error.message}`);
      }
      // Other Keybrake refusals (revoked or expired key, endpoint not on the allowlist) are final too;
      // keybrake_unavailable (503) is the one worth retrying.
      const refusal = keybrakeRefusal(error);
      if (refusal && refusal !== "keybrake_unavailable") {
        throw new AbortTaskRunError(`${refusal}: ${(error as Error).message}`);
      }
      if (error instanceof Stripe.errors.StripeCardError) {
        throw new AbortTaskRunError(`card declined: ${error.decline_code ?? error.code ?? error.message}`);
      }
      throw error; // network trouble, Stripe 5xx, a real Stripe rate limit: let Trigger.dev retry
    }
  },
});
