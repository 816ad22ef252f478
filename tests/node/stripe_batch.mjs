// What the Trigger.dev example's tasks do, in one Node process, against a running Keybrake:
// a "parent" issues a capped Stripe vault key over the vault API, then N "children" create
// PaymentIntents with the official `stripe` package in parallel, each with maxNetworkRetries: 2.
// Prints one JSON document on stdout; tests/e2e/test_node_sdk.py makes the assertions.
//
// Environment:
//   KEYBRAKE_URL          vault API / base-URL routes, e.g. http://127.0.0.1:8788
//   KEYBRAKE_API_KEY      an admin token (kba_...)
//   MODE                  "forward": through HTTPS_PROXY with https-proxy-agent + NODE_EXTRA_CA_CERTS
//                         "baseurl": plain HTTP to ${KEYBRAKE_URL}/stripe, no proxy, no CA
//   HTTPS_PROXY           forward mode only, e.g. http://127.0.0.1:8787
//   NODE_EXTRA_CA_CERTS   forward mode only (read by Node at start-up, not by this script)
//   N, AMOUNT, CAP, LABEL how many charges, of how many cents each, under which daily USD cap

import Stripe from "stripe";
import { HttpsProxyAgent } from "https-proxy-agent";

const env = process.env;
const KEYBRAKE_URL = required("KEYBRAKE_URL").replace(/\/+$/, "");
const ADMIN_TOKEN = required("KEYBRAKE_API_KEY");
const MODE = env.MODE ?? "forward";
const N = Number(env.N ?? 100);
const AMOUNT = Number(env.AMOUNT ?? 5000);
const CAP = env.CAP ?? "475";
const LABEL = env.LABEL ?? `node-e2e/${MODE}/${Date.now()}`;

function required(name) {
  const value = env[name];
  if (!value) {
    console.error(`stripe_batch.mjs: ${name} is not set`);
    process.exit(2);
  }
  return value;
}

async function vault(method, path, body, headers = {}) {
  const response = await fetch(`${KEYBRAKE_URL}${path}`, {
    method,
    headers: { Authorization: `Bearer ${ADMIN_TOKEN}`, "Content-Type": "application/json", ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) {
    throw new Error(`${method} ${path} -> ${response.status}: ${text}`);
  }
  return { status: response.status, headers: Object.fromEntries(response.headers), json: JSON.parse(text) };
}

// The base-URL route lives under /stripe on the API port; stripe-node's `host` option takes no path,
// so a tiny HttpClient puts the prefix in front of every request path and hands it to the SDK's own
// Node client (Stripe.createNodeHttpClient) for the actual request.
function prefixedHttpClient(prefix) {
  const inner = Stripe.createNodeHttpClient();
  return {
    getClientName: () => `keybrake-prefix(${inner.getClientName()})`,
    makeRequest: (host, port, path, ...rest) => inner.makeRequest(host, port, `${prefix}${path}`, ...rest),
  };
}

function stripeFor(vaultKey) {
  const common = { maxNetworkRetries: 2, timeout: 30_000 };
  if (MODE === "forward") {
    const proxy = env.HTTPS_PROXY ?? env.https_proxy;
    if (!proxy) throw new Error("MODE=forward needs HTTPS_PROXY");
    // stripe-node uses its own https.Agent and never reads HTTPS_PROXY: hand it a proxying agent.
    return new Stripe(vaultKey, { ...common, httpAgent: new HttpsProxyAgent(proxy) });
  }
  if (MODE === "baseurl") {
    const base = new URL(KEYBRAKE_URL);
    return new Stripe(vaultKey, {
      ...common,
      protocol: base.protocol.replace(":", ""),
      host: base.hostname,
      port: base.port || (base.protocol === "https:" ? 443 : 80),
      httpClient: prefixedHttpClient(`${base.pathname.replace(/\/+$/, "")}/stripe`),
    });
  }
  throw new Error(`unknown MODE ${MODE} (forward | baseurl)`);
}

const started = Date.now();

// Parent: one capped key for this run. The Idempotency-Key makes a retried parent get the same key.
const issued = await vault("POST", "/vault/keys", {
  vendor: "stripe",
  daily_usd_cap: Number(CAP),
  allowed_endpoints: ["POST /v1/payment_intents"],
  expires_in: "2h",
  agent_run_label: LABEL,
}, { "Idempotency-Key": `node-e2e/${LABEL}` });
const replay = await vault("POST", "/vault/keys", {
  vendor: "stripe",
  daily_usd_cap: Number(CAP),
  allowed_endpoints: ["POST /v1/payment_intents"],
  expires_in: "2h",
  agent_run_label: LABEL,
}, { "Idempotency-Key": `node-e2e/${LABEL}` });
const { vault_key: vaultKey, key_id: keyId } = issued.json;

// Children: N parallel charges, each with its own client as a separate task run would have.
let attempts = 0; // every HTTP attempt stripe-node makes, retries included
const responseStatuses = new Set(); // the HTTP status of every answer stripe-node read (a proxy's 407 too)
const outcomes = await Promise.all(Array.from({ length: N }, async (_, i) => {
  const stripe = stripeFor(vaultKey);
  stripe.on("request", () => { attempts += 1; });
  stripe.on("response", (response) => { responseStatuses.add(response.status); });
  try {
    const intent = await stripe.paymentIntents.create({
      amount: AMOUNT,
      currency: "usd",
      confirm: true,
      payment_method: "pm_card_visa",
      metadata: { child: String(i) },
    });
    return { kind: "succeeded", id: intent.id, status: intent.status };
  } catch (err) {
    if (err instanceof Stripe.errors.StripeRateLimitError && err.headers?.["x-keybrake-cap-hit"] === "true") {
      return {
        kind: "cap_hit",
        code: err.code,
        status: err.statusCode,
        should_retry: err.headers["stripe-should-retry"],
        message: err.message,
      };
    }
    return { kind: "other", type: err?.type ?? err?.constructor?.name, status: err?.statusCode, message: String(err?.message ?? err) };
  }
}));

// The proxy settles a call just after writing its reply (settling never holds up a request), so
// the last holds may still be open when the SDK calls return: wait, bounded, until none is.
async function settledKey() {
  const deadline = Date.now() + 15000;
  for (;;) {
    const key = await vault("GET", `/vault/keys/${keyId}`);
    if (key.json.reserved_usd === "0.00" || Date.now() > deadline) return key;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

const shown = await settledKey();
const spend = await vault("GET", `/vault/spend?label=${encodeURIComponent(LABEL)}&by=key`);
const revoked = await vault("DELETE", `/vault/keys/${keyId}`);

const of = (kind) => outcomes.filter((o) => o.kind === kind);
const capHits = of("cap_hit");
console.log(JSON.stringify({
  mode: MODE,
  label: LABEL,
  key_id: keyId,
  vault_key_prefix: vaultKey.slice(0, 6),
  issue_status: issued.status,
  replay_status: replay.status,
  replay_header: replay.headers["idempotent-replayed"] ?? null,
  replay_same_key: replay.json.vault_key === vaultKey,
  n: N,
  attempts,
  response_statuses: [...responseStatuses].sort(),
  succeeded: of("succeeded").length,
  succeeded_statuses: [...new Set(of("succeeded").map((o) => o.status))],
  cap_hits: capHits.length,
  cap_hit_codes: [...new Set(capHits.map((o) => o.code))],
  cap_hit_statuses: [...new Set(capHits.map((o) => o.status))],
  cap_hit_should_retry: [...new Set(capHits.map((o) => o.should_retry))],
  cap_hit_message: capHits[0]?.message ?? null,
  other_errors: of("other"),
  key: shown.json,
  spend: spend.json.data,
  revoked: revoked.json.revoked,
  elapsed_ms: Date.now() - started,
}));
