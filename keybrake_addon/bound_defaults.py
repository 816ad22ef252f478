"""Default bounds of the Bounds addon, apart so that the CLI can show them without loading mitmproxy."""

# Resend's POST /emails/batch takes up to 100 emails of JSON; at a generous 30 KiB of HTML each that
# is 3 MiB. No Stripe or Twilio call we price comes near (form bodies of a few KiB). Attachments
# (base64, up to Resend's 40 MB per email) need a bigger bound: `--max-vendor-body 41m`.
DEFAULT_MAX_VENDOR_BODY = "4m"
DEFAULT_MAX_HEADER_BYTES = "64k"
DEFAULT_HEADER_TIMEOUT_S = 10.0
# Between requests a kept-alive connection holds a slot and a file descriptor while sending nothing;
# mitmproxy alone would keep it 10 minutes. SDK pools check a connection before they reuse it, and a
# request that finds it closed is retried on a new one before anything was sent.
DEFAULT_IDLE_TIMEOUT_S = 60.0
# Workers usually reach the proxy over loopback, so one address is a whole host's worth of
# workers (the crash scenario runs 250 at once): the per-address cap is for an exposed API listener.
DEFAULT_MAX_CONNS_PER_ADDRESS = 512
DEFAULT_MAX_CONNS = 4096
