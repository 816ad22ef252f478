"""Fake Twilio and Resend servers for the tests (fake Stripe ships in keybrake_addon.fakes: the demo needs it)."""
