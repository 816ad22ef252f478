"""Run labels as a tree: `trigger.dev/billing-agent/run_1` sits under `trigger.dev/billing-agent/`.

The ledger sums each row under a prefix (`DashboardReads.run_nodes`); this is the way back up.
"""

SEPARATOR = "/"


def breadcrumbs(prefix: str) -> list[tuple[str, str]]:
    """(name, prefix) for each step from the top to `prefix`."""
    steps, walked = [], ""
    for part in prefix.split(SEPARATOR)[:-1]:
        walked += part + SEPARATOR
        steps.append((part + SEPARATOR, walked))
    return steps
