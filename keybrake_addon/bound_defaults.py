"""Default bounds of the Bounds addon, apart so that the CLI can show them without loading mitmproxy."""

# Resend's POST /emails/batch takes up to 100 emails of JSON; at a generous 30 KiB of HTML each that
# is 3 MiB. No Stripe or Twilio call we price comes near (form bodies of a few KiB). Attachments
# (base64, up to Resend's 40 MB per email) need a bigger bound: `--max-vendor-body 41m`.
DEFAULT_MAX_VENDOR_BODY = "4m"
DEFAULT_MAX_HEADER_BYTES = "64k"
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_MAX_CONNS_PER_ADDRESS = 64
DEFAULT_MAX_CONNS = 1024
