import { AbortTaskRunError, idempotencyKeys, logger, task } from "@trigger.dev/sdk";
import { issueVaultKey, revokeVaultKey, revokeVaultKeysByLabel, showVaultKey } from "../keybrake";
import { CAP_HIT, chargeCustomer, type ChargeCustomerPayload } from "./charge-customer";

export interface BillingAgentPayload {
  /** One child run per charge; each gets the run's vault key added to its payload. */
  charges: Array<Omit<ChargeCustomerPayload, "vaultKey">>;
  /** The most this run may move in a day, in USD, however many children it fans out to. */
  dailyUsdCap?: number;
}

export interface BillingAgentOutput {
  keyId: string;
  charged: Array<{ paymentIntentId: string; amount: number; currency: string }>;
  stoppedByCap: number;
  failed: Array<{ runId: string; error: string }>;
  spentUsd: string;
  dailyUsdCap: string | null;
}

const runLabel = (runId: string) => `trigger.dev/billing-agent/${runId}`;

function errorMessage(error: unknown): string {
  if (error && typeof error === "object" && "message" in error) return String(error.message);
  return String(error);
}

export const billingAgent = task({
  id: "billing-agent",
  retry: { maxAttempts: 3 },
  run: async (payload: BillingAgentPayload, { ctx }): Promise<BillingAgentOutput> => {
    // One capped key per run. The Idempotency-Key makes a retried attempt of this run get the same
    // key (and the same remaining budget) instead of a fresh cap.
    const key = await issueVaultKey(
      {
        vendor: "stripe",
        daily_usd_cap: payload.dailyUsdCap ?? 500,
        allowed_endpoints: ["POST /v1/payment_intents"],
        expires_in: "2h",
        label: runLabel(ctx.run.id),
      },
      `billing-agent/${ctx.run.id}`,
    );
    if (key.status !== "active") {
      throw new AbortTaskRunError(`this run's vault key ${key.key_id} is ${key.status}: its budget is closed`);
    }

    let retryMayFollow = false;
    try {
      const batch = await chargeCustomer.batchTriggerAndWait(
        await Promise.all(
          payload.charges.map(async (charge, i) => ({
            payload: { ...charge, vaultKey: key.vault_key },
            // Scoped to this run: a retried attempt waits on the same children instead of charging again.
            options: { idempotencyKey: await idempotencyKeys.create(`charge-${i}`) },
          })),
        ),
      );

      const output: BillingAgentOutput = {
        keyId: key.key_id, charged: [], stoppedByCap: 0, failed: [], spentUsd: "0.00", dailyUsdCap: key.daily_usd_cap,
      };
      for (const run of batch.runs) {
        if (run.ok) {
          const { paymentIntentId, amount, currency } = run.output;
          output.charged.push({ paymentIntentId, amount, currency });
        } else if (errorMessage(run.error).includes(CAP_HIT)) {
          output.stoppedByCap += 1;
        } else {
          output.failed.push({ runId: run.id, error: errorMessage(run.error) });
        }
      }
      output.spentUsd = (await showVaultKey(key.key_id)).spent_usd;
      logger.info("billing run done", { ...output, charged: output.charged.length });
      return output;
    } catch (error) {
      // Trigger.dev retries anything but AbortTaskRunError (while attempts remain); that retry gets
      // this same key back, so leave it alive for it. onFailure revokes after the last attempt.
      retryMayFollow = !(error instanceof AbortTaskRunError);
      throw error;
    } finally {
      // The run's spending is over: revoke, so the key in the children's payloads is worthless now.
      if (!retryMayFollow) await revokeVaultKey(key.key_id);
    }
  },
  // Called once no retry follows. Revoking by label covers keys of attempts that crashed or threw.
  onFailure: async ({ ctx }) => {
    await revokeVaultKeysByLabel(runLabel(ctx.run.id));
  },
});
