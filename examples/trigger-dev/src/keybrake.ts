// Small helpers for talking to Keybrake from Trigger.dev tasks:
// the vault API (issue / show / revoke capped keys) and a stripe-node client for a vault key.
import Stripe from "stripe";
import { HttpsProxyAgent } from "https-proxy-agent";

/** The body of `POST /vault/keys`. */
export interface VaultKeyRequest {
  vendor: "stripe";
  daily_usd_cap: number;
  allowed_endpoints: string[];
  expires_in: string;
  label: string;
}

/** A vault key as `GET /vault/keys/{key_id}` shows it (amounts are decimal strings, e.g. "450.00"). */
export interface VaultKeyInfo {
  key_id: string;
  label: string | null;
  status: "active" | "revoked" | "expired";
  daily_usd_cap: string | null;
  spent_usd: string;
  reserved_usd: string;
  remaining_usd: string | null;
  expires_at: string | null;
}

/** What `POST /vault/keys` answers: the key itself (shown once) and its settings. */
export interface IssuedVaultKey extends VaultKeyInfo {
  vault_key: string;
}

export class KeybrakeApiError extends Error {
  constructor(readonly method: string, readonly path: string, readonly status: number, readonly body: string) {
    super(`Keybrake ${method} ${path} answered ${status}: ${body}`);
    this.name = "KeybrakeApiError";
  }
}

function requiredEnv(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (see examples/trigger-dev/README.md)`);
  return value;
}

async function vault<T>(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<T> {
  const base = requiredEnv("KEYBRAKE_URL").replace(/\/+$/, "");
  const response = await fetch(`${base}${path}`, {
    method,
    headers: {
      Authorization: `Bearer ${requiredEnv("KEYBRAKE_API_KEY")}`,
      "Content-Type": "application/json",
      ...headers,
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new KeybrakeApiError(method, path, response.status, text);
  return JSON.parse(text) as T;
}

/**
 * Issue a capped key. The same `idempotencyKey` with the same body returns the same key for 24 h,
 * so a retried parent run keeps one key, and one budget, instead of getting a fresh cap per attempt.
 */
export function issueVaultKey(request: VaultKeyRequest, idempotencyKey: string): Promise<IssuedVaultKey> {
  return vault<IssuedVaultKey>("POST", "/vault/keys", request, { "Idempotency-Key": idempotencyKey });
}

export function showVaultKey(keyId: string): Promise<VaultKeyInfo> {
  return vault<VaultKeyInfo>("GET", `/vault/keys/${encodeURIComponent(keyId)}`);
}

/** Revoke one key; revoking twice is fine. The very next request with it is refused. */
export function revokeVaultKey(keyId: string): Promise<{ revoked: string[] }> {
  return vault<{ revoked: string[] }>("DELETE", `/vault/keys/${encodeURIComponent(keyId)}`);
}

/** Revoke every key issued with this `label`. */
export function revokeVaultKeysByLabel(label: string): Promise<{ revoked: string[] }> {
  return vault<{ revoked: string[] }>("DELETE", `/vault/keys?label=${encodeURIComponent(label)}`);
}

/**
 * stripe-node options for Keybrake's base-URL route, e.g. `http://127.0.0.1:8081/stripe`.
 *
 * stripe-node's `host` option takes a host name only and its `/v1/` base path is fixed, so the
 * `/stripe` prefix goes in through the documented `httpClient` option: a two-method client that
 * prefixes the path and hands the request to the SDK's own Node client.
 */
export function stripeBaseUrlOptions(baseUrl: string): Stripe.StripeConfig {
  const url = new URL(baseUrl);
  const secure = url.protocol === "https:";
  const prefix = url.pathname.replace(/\/+$/, ""); // "/stripe"
  const nodeClient = Stripe.createNodeHttpClient();
  const httpClient: Stripe.HttpClient = {
    getClientName: () => "keybrake-base-url",
    makeRequest: (host, port, path, method, headers, requestData, protocol, timeout) =>
      nodeClient.makeRequest(host, port, `${prefix}${path}`, method, headers, requestData, protocol, timeout),
  };
  return { protocol: secure ? "https" : "http", host: url.hostname, port: url.port || (secure ? 443 : 80), httpClient };
}

/**
 * A stripe-node client for a vault key, going through Keybrake:
 * - `KEYBRAKE_STRIPE_BASE_URL` set (e.g. `${KEYBRAKE_URL}/stripe`): the base-URL route, no CA to trust;
 * - otherwise the forward proxy in `HTTPS_PROXY`. stripe-node ignores `HTTPS_PROXY`, so it gets an
 *   https-proxy-agent; Node trusts Keybrake's CA through `NODE_EXTRA_CA_CERTS` (read at process start).
 */
export function stripeForVaultKey(vaultKey: string): Stripe {
  const common: Stripe.StripeConfig = { maxNetworkRetries: 2 };
  const baseUrl = process.env.KEYBRAKE_STRIPE_BASE_URL;
  if (baseUrl) return new Stripe(vaultKey, { ...common, ...stripeBaseUrlOptions(baseUrl) });
  const proxy = process.env.HTTPS_PROXY ?? process.env.https_proxy;
  if (!proxy) throw new Error("set HTTPS_PROXY (forward proxy) or KEYBRAKE_STRIPE_BASE_URL (base-URL route)");
  return new Stripe(vaultKey, { ...common, httpAgent: new HttpsProxyAgent(proxy) });
}

/** Keybrake's refusal code (`keybrake_cap_exceeded`, `keybrake_key_revoked`, ...) on a stripe-node error, if any. */
export function keybrakeRefusal(error: unknown): string | undefined {
  return error instanceof Stripe.errors.StripeError ? error.headers?.["x-keybrake-refusal"] : undefined;
}
