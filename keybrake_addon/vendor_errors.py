"""A vendor Keybrake cannot reach (DNS, connection refused, timeout): a log line and an audit status.

mitmproxy answers a failed upstream connection itself, with its HTML 502: its HTTP/1 layer writes
that page after the `error` hook, and no hook can replace it (mitmproxy 12). So the client still
gets that 502, but the operator now learns which vendor could not be reached and why (one bounded
line), and the call's audit row records the 502 instead of no status at all. Nothing was sent, so
the call's hold is released (the settlement does that: settlement.resolve).
"""

import logging
import weakref

from .keyless_refusals import LogBudget
from .text import loggable

logger = logging.getLogger("keybrake")

PROXY_CONNECT_FAILED_STATUS = 502  # what mitmproxy answers when the upstream connection fails
_LOG = LogBudget()  # a vendor down for everyone would otherwise log one line per call


class UnreachableVendors:
    def __init__(self) -> None:
        # client connection -> (vendor address, error), from mitmproxy's server_connect_error hook
        self._failures: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def failed(self, client, server) -> None:
        self._failures[client] = (server.address, server.error or "the connection failed")

    def take(self, client) -> tuple | None:
        """The connection failure that ends this client's current flow, if that is how it ended (once)."""
        return self._failures.pop(client, None)

    def report(self, ticket, failure: tuple) -> int:
        """Log it; returns the status the client got."""
        address, error = failure
        where = f"{address[0]}:{address[1]}" if address else "?"
        _LOG.log(logger, logging.WARNING, "keybrake: cannot reach %s at %s: %s. Nothing was sent for key %s; the "
                 "client got a 502", ticket.vendor.NAME, loggable(where, 80), loggable(str(error)), ticket.key_id)
        return PROXY_CONNECT_FAILED_STATUS
