"""Alerts: subscriptions, and the delivery of the outbox's events (ledger/alert_store.py) to them."""
