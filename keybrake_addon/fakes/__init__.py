"""A local stand-in for Stripe's API (stdlib only), for `keybrake demo`, the benchmark and the tests.

`_http` is the plumbing it shares with the tests' fake Twilio and Resend (tests/support/fakes/).
"""
