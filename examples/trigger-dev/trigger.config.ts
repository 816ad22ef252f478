import { defineConfig } from "@trigger.dev/sdk";

export default defineConfig({
  // Your project ref from the Trigger.dev dashboard (Project settings), e.g. "proj_abcdefghijklmnop".
  project: process.env.TRIGGER_PROJECT_REF ?? "proj_replace_with_your_ref",
  runtime: "node",
  dirs: ["./src/trigger"],
  // Compute seconds a run may take; the vault keys expire after 2 h anyway.
  maxDuration: 3600,
  retries: {
    enabledInDev: true,
    default: { maxAttempts: 3, factor: 2, minTimeoutInMs: 1_000, maxTimeoutInMs: 10_000, randomize: true },
  },
});
