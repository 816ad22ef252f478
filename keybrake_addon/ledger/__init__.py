"""The ledger: vault keys, their reservations and the audit trail, with atomic cap checks.

`base` holds the records and the interface; `sqlite` the embedded backend; `corrections`
the after-the-fact fixes (final prices, settling by hand); `housekeeping` a proxy's
checkpoint and heartbeat thread.
"""
