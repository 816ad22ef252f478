"""Run labels as a tree: `trigger.dev/billing-agent/run_1` sits under `trigger.dev/billing-agent/`.

The runs page shows the children of one prefix; each child is either a run (a whole label) or a
group (a longer prefix) whose totals roll up every run under it.
"""

from dataclasses import dataclass, field

from ...ledger.dashboard_reads import LabelTotals

SEPARATOR = "/"


@dataclass
class RunNode:
    name: str  # what the row shows: the part of the label after the parent's prefix
    prefix: str | None = None  # a group: the prefix its page opens
    label: str | None = None  # a run: its label ("" for keys without one, with unlabelled set)
    unlabelled: bool = False
    runs: int = 0
    keys: int = 0
    active: int = 0
    revoked: int = 0
    spent: int = 0
    reserved: int = 0
    calls: int = 0
    capped_keys: int = 0
    total_cap: int = 0
    capped_spent: int = 0
    cap_hits: int = 0
    last_created: str = ""
    vendors: set[str] = field(default_factory=set)

    @property
    def is_group(self) -> bool:
        return self.prefix is not None

    @property
    def status(self) -> str:
        if self.active:
            return "active"
        if self.revoked == self.keys:
            return "revoked"
        return "expired" if self.revoked == 0 else "ended"

    def add(self, totals: LabelTotals) -> None:
        self.runs += 1
        self.keys += totals.keys
        self.active += totals.active
        self.revoked += totals.revoked
        self.spent += totals.spent
        self.reserved += totals.reserved
        self.calls += totals.calls
        self.capped_keys += totals.capped_keys
        self.total_cap += totals.total_cap
        self.capped_spent += totals.capped_spent
        self.cap_hits += totals.cap_hits
        self.last_created = max(self.last_created, totals.last_created)
        self.vendors.update(totals.vendors)
        if totals.vendor_count > len(totals.vendors):
            self.vendors.add("…")


def children(labels: list[LabelTotals], prefix: str) -> list[RunNode]:
    """The rows under `prefix` ("" is the top), newest activity first."""
    nodes: dict[tuple[str, bool], RunNode] = {}
    for totals in labels:
        if totals.label is None:
            if prefix:
                continue
            node = nodes.setdefault(("", False), RunNode("(no label)", label="", unlabelled=True))
        else:
            if not totals.label.startswith(prefix):
                continue
            rest = totals.label[len(prefix):]
            head, separator, _ = rest.partition(SEPARATOR)
            if separator and head:  # a group: everything under prefix + head + "/"
                node = nodes.setdefault((head + SEPARATOR, True), RunNode(head + SEPARATOR, prefix=prefix + head + SEPARATOR))
            else:
                node = nodes.setdefault((rest, False), RunNode(rest or totals.label, label=totals.label))
        node.add(totals)
    return sorted(nodes.values(), key=lambda n: (n.last_created, n.name), reverse=True)


def breadcrumbs(prefix: str) -> list[tuple[str, str]]:
    """(name, prefix) for each step from the top to `prefix`."""
    steps, walked = [], ""
    for part in prefix.split(SEPARATOR)[:-1]:
        walked += part + SEPARATOR
        steps.append((part + SEPARATOR, walked))
    return steps
