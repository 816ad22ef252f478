"""Prometheus metrics: the series (registry.py) and the ledger's totals read at scrape time (ledger_totals.py).

Only the proxy process imports this package: prometheus-client costs ~70 ms to import, and the
CLI must stay quick to start.
"""
