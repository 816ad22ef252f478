"""What the dashboard's pages read: totals, runs, a key's history, the audit trail, budgets' keys.

Every read takes a `ReadScope`: what the signed-in admin token may see. Each query is shaped for
an index (migration 6), so a page answers in milliseconds on a ledger of a million audit rows
and ten thousand keys (`scripts/bench_dashboard.py` measures it):
- money by vendor comes from the keys' own counters, not from summing reservations;
- refusals and cap hits come from partial indexes that hold refused rows only;
- open and unknown holds from a partial index that holds open holds only;
- spend over time from a partial index of priced answers, keyed by the hour (the amount and the
  vendor are in the index, so a week of calls is summed without reading a row).

Amounts are integer USD micros; times are the ledger's ISO 8601 UTC text or datetimes.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .base import KeyRecord
from .database import Database, Tx
from .decisions import window_of
from .store import CAP_HIT_DECISIONS, RUN_GONE_AFTER, SqlLedger
from .times import from_text, to_text

NEAR_CAP_PERCENT = 80
AUDIT_PAGE_ROWS = 50
EXPORT_CHUNK_ROWS = 2000
MAX_CHART_POINTS = 2000  # a chart of a key's spend: per-minute points, hourly past this many
UNLABELLED_KEYS = 200  # the keys issued without a label that their page lists

_CAP_HITS = "(" + ", ".join(f"'{code}'" for code in CAP_HIT_DECISIONS) + ")"
# The partial indexes' own conditions, written as the indexes write them: SQLite uses a partial
# index only when the query repeats its condition.
_REFUSED = "decision <> 'allowed'"
_PRICED = "actual_micros <> 0"  # an answer that moved money (refunds too): what spend charts sum
_HOUR = "substr(ts, 1, 13)"  # "2026-12-02T14", as the spend index holds it
_OPEN = "r.state IN ('pending', 'unknown')"
# An open hold whose outcome nobody will report: the vendor's answer was lost (unknown), or the
# proxy run that made it stopped beating with it still pending.
_UNKNOWN = ("(r.state = 'unknown' OR r.run_id IS NULL OR r.run_id IN "
            "(SELECT run_id FROM proxy_runs WHERE stopped_at IS NOT NULL OR heartbeat_at < ?))")
_ACTIVE = "(k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > ?))"


@dataclass(frozen=True)
class ReadScope:
    """What one admin token may see. Empty tuples mean "no restriction" on that axis.

    label_prefixes: only keys (and their audit rows) whose label starts with one of these.
    vendors: only keys (and audit rows) of these vendors.
    minted_by: only keys (and audit rows) that this admin token minted (a scoped token's view).
    """

    label_prefixes: tuple[str, ...] = ()
    vendors: tuple[str, ...] = ()
    minted_by: str | None = None

    @classmethod
    def everything(cls) -> "ReadScope":
        return cls()

    @property
    def unrestricted(self) -> bool:
        return not self.label_prefixes and not self.vendors and self.minted_by is None

    def allows(self, label: str | None, vendor: str | None, minted_by: str | None = None) -> bool:
        if self.minted_by is not None and minted_by != self.minted_by:
            return False
        if self.vendors and vendor not in self.vendors:
            return False
        if self.label_prefixes and not any(label is not None and label.startswith(p) for p in self.label_prefixes):
            return False
        return True

    def clauses(self, *, label: str, vendor: str) -> tuple[list[str], list]:
        """SQL conditions (and their parameters) on the given label and vendor columns (and on the
        key_id column beside them: audit rows and vault keys both name their key so)."""
        clauses, params = [], []
        if self.minted_by is not None:
            key = label.removesuffix("label") + "key_id"
            clauses.append(f"{key} IN (SELECT mk.key_id FROM vault_keys mk WHERE mk.minted_by = ?)")
            params.append(self.minted_by)
        if self.label_prefixes:
            # substr, not LIKE or a range: no wildcard to escape, and no collation to trust.
            clauses.append("(" + " OR ".join(f"substr({label}, 1, {len(p)}) = ?" for p in self.label_prefixes) + ")")
            params += list(self.label_prefixes)
        if self.vendors:
            clauses.append(f"{vendor} IN (" + ", ".join("?" for _ in self.vendors) + ")")
            params += list(self.vendors)
        return clauses, params


@dataclass(frozen=True)
class VendorTotals:
    vendor: str
    today_spent: int
    today_reserved: int
    month_spent: int
    reserved: int  # every open hold of the vendor's keys, whatever day it was made
    keys: int
    active_keys: int


@dataclass(frozen=True)
class NearCap:
    key_id: str
    label: str | None
    vendor: str
    used: int
    cap: int
    window: str  # "total" | "daily"

    @property
    def percent(self) -> float:
        return 100.0 * self.used / self.cap if self.cap else 0.0


@dataclass(frozen=True)
class Overview:
    now: datetime
    vendors: list[VendorTotals]
    refusals_today: dict[str, int]  # decision -> count
    active_keys: int
    near_cap: list[NearCap]  # the closest to their cap first, at most `near_cap_limit`
    near_cap_count: int
    unknown_holds: int
    unknown_micros: int
    open_holds: int

    @property
    def cap_hits_today(self) -> int:
        return sum(count for decision, count in self.refusals_today.items() if decision in CAP_HIT_DECISIONS)

    @property
    def refused_today(self) -> int:
        return sum(self.refusals_today.values())


@dataclass(frozen=True)
class RunNode:
    """One row of the runs tree under a prefix: a run (a whole label) or a group (a longer prefix,
    ending with "/") whose totals roll up every run under it."""

    name: str  # the part after the parent's prefix: "run_1", or "billing-agent/" for a group
    label: str | None  # a run's whole label; None for a group, and for keys issued without a label
    is_group: bool
    runs: int  # distinct labels under it
    keys: int
    active: int
    revoked: int
    spent: int
    reserved: int
    calls: int
    capped_keys: int  # keys with a total cap
    total_cap: int  # the sum of those caps
    capped_spent: int  # spent + reserved of those keys: what the bar compares to total_cap
    cap_hits: int
    last_created: str
    vendor_count: int
    vendors: tuple[str, ...]  # the first and last by name: every one when vendor_count <= 2

    @property
    def prefix(self) -> str | None:
        return None if not self.is_group else self.label

    @property
    def unlabelled(self) -> bool:
        return not self.is_group and self.label is None

    @property
    def status(self) -> str:
        if self.active:
            return "active"
        if self.revoked == self.keys:
            return "revoked"
        return "expired" if self.revoked == 0 else "ended"


@dataclass(frozen=True)
class RunNodes:
    nodes: list[RunNode]  # one page, the most recently issued first
    total: int  # rows under the prefix, on every page


@dataclass(frozen=True)
class AuditQuery:
    label: str | None = None
    unlabelled: bool = False  # only rows of keys issued without a label
    key_id: str | None = None
    vendor: str | None = None
    decision: str | None = None  # a decision code, or "refused" (any refusal), or "cap_hit"
    since: datetime | None = None
    until: datetime | None = None  # exclusive


@dataclass(frozen=True)
class AuditCursor:
    """Where a page of newest-first rows stopped: the last row's time and id."""

    ts: str
    id: int

    def text(self) -> str:
        return f"{self.id}@{self.ts}"

    @classmethod
    def parse(cls, text: str) -> "AuditCursor | None":
        ident, _, ts = text.partition("@")
        if not ident.isdigit() or len(text) > 80:
            return None
        try:
            from_text(ts)
        except ValueError:
            return None
        return cls(ts, int(ident))


@dataclass(frozen=True)
class AuditPage:
    rows: list[dict]
    next_cursor: AuditCursor | None  # None: this is the last page


@dataclass(frozen=True)
class SpendPoint:
    at: str  # the bucket's start: "2026-12-02T14" (hour) or "2026-12-02T14:05" (minute)
    vendor: str | None
    micros: int


@dataclass(frozen=True)
class BudgetKeys:
    keys: int
    active: int


class DashboardReads:
    """The dashboard's reads of one ledger. Each method reads in one snapshot."""

    def __init__(self, ledger: SqlLedger) -> None:
        self._ledger = ledger
        self._database: Database = ledger.database

    # --- the overview -------------------------------------------------------------------------

    def overview(self, scope: ReadScope, *, near_cap_limit: int = 10) -> Overview:
        with self._database.reading() as tx:
            now = tx.now()
            today = window_of(now)
            month_start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            vendors = self._vendor_totals(tx, scope, now, today, month_start)
            refusals = self._refusals_since(tx, scope, datetime.fromisoformat(today).replace(tzinfo=UTC))
            near, near_count = self._near_cap(tx, scope, now, today, near_cap_limit)
            unknown_holds, unknown_micros, open_holds = self._unknown(tx, scope, now)
        return Overview(now, vendors, refusals, sum(v.active_keys for v in vendors), near, near_count,
                        unknown_holds, unknown_micros, open_holds)

    def _vendor_totals(self, tx: Tx, scope: ReadScope, now: datetime, today: str,
                       month_start: datetime) -> list[VendorTotals]:
        clauses, params = scope.clauses(label="k.label", vendor="k.vendor")
        month_text = to_text(month_start)
        # A key made this month spent all of its money this month; its counters say how much.
        rows = tx.rows(
            "SELECT k.vendor, COUNT(*) AS keys, "
            f"SUM(CASE WHEN {_ACTIVE} THEN 1 ELSE 0 END) AS active, "
            "CAST(COALESCE(SUM(CASE WHEN k.day = ? THEN k.day_spent_micros ELSE 0 END), 0) AS BIGINT) AS today_spent, "
            "CAST(COALESCE(SUM(CASE WHEN k.day = ? THEN k.day_reserved_micros ELSE 0 END), 0) AS BIGINT) "
            "AS today_reserved, "
            "CAST(COALESCE(SUM(CASE WHEN k.created_at >= ? THEN k.spent_micros ELSE 0 END), 0) AS BIGINT) "
            "AS month_new, CAST(COALESCE(SUM(k.reserved_micros), 0) AS BIGINT) AS reserved "
            "FROM vault_keys k" + _where(clauses) + " GROUP BY k.vendor ORDER BY k.vendor",
            (to_text(now), today, today, month_text, *params))
        # A key made earlier: only its holds of this month's days count. Only keys that could
        # still reserve on the first of the month qualify (neither revoked nor expired before it).
        older = tx.rows(
            "SELECT k.vendor, CAST(COALESCE(SUM(r.actual_micros), 0) AS BIGINT) AS spent "
            "FROM vault_keys k JOIN reservations r ON r.key_id = k.key_id "
            "WHERE k.created_at < ? AND k.spent_micros > 0 AND (k.revoked_at IS NULL OR k.revoked_at >= ?) "
            "AND (k.expires_at IS NULL OR k.expires_at >= ?) AND r.state = 'settled' AND r.day >= ?"
            + "".join(" AND " + c for c in clauses) + " GROUP BY k.vendor",
            (month_text, month_text, month_text, month_start.date().isoformat(), *params))
        earlier = {row["vendor"]: int(row["spent"]) for row in older}
        return [VendorTotals(row["vendor"], int(row["today_spent"]), int(row["today_reserved"]),
                             int(row["month_new"]) + earlier.get(row["vendor"], 0), int(row["reserved"]),
                             int(row["keys"]), int(row["active"])) for row in rows]

    def _refusals_since(self, tx: Tx, scope: ReadScope, since: datetime) -> dict[str, int]:
        clauses, params = scope.clauses(label="label", vendor="vendor")
        rows = tx.rows(f"SELECT decision, COUNT(*) AS n FROM audit WHERE {_REFUSED} AND ts >= ?"
                       + "".join(" AND " + c for c in clauses) + " GROUP BY decision ORDER BY decision",
                       (to_text(since), *params))
        return {row["decision"]: int(row["n"]) for row in rows}

    def _near_cap(self, tx: Tx, scope: ReadScope, now: datetime, today: str,
                  limit: int) -> tuple[list[NearCap], int]:
        clauses, params = scope.clauses(label="k.label", vendor="k.vendor")
        # used * 100 >= cap * 80, in integers: no rounding decides who is near.
        rows = tx.rows(
            "SELECT k.key_id, k.label, k.vendor, k.total_cap_micros, k.daily_cap_micros, "
            "k.spent_micros + k.reserved_micros AS total_used, "
            "CASE WHEN k.day = ? THEN k.day_spent_micros + k.day_reserved_micros ELSE 0 END AS daily_used "
            f"FROM vault_keys k WHERE {_ACTIVE} AND ("
            f"(k.total_cap_micros > 0 AND (k.spent_micros + k.reserved_micros) * 100 >= k.total_cap_micros * {NEAR_CAP_PERCENT}) "
            f"OR (k.daily_cap_micros > 0 AND k.day = ? AND (k.day_spent_micros + k.day_reserved_micros) * 100 "
            f">= k.daily_cap_micros * {NEAR_CAP_PERCENT}))" + "".join(" AND " + c for c in clauses),
            (today, to_text(now), today, *params))
        near = []
        for row in rows:
            options = []
            if row["total_cap_micros"]:
                options.append(NearCap(row["key_id"], row["label"], row["vendor"], int(row["total_used"]),
                                       int(row["total_cap_micros"]), "total"))
            if row["daily_cap_micros"]:
                options.append(NearCap(row["key_id"], row["label"], row["vendor"], int(row["daily_used"]),
                                       int(row["daily_cap_micros"]), "daily"))
            near.append(max(options, key=lambda n: n.used * 10**12 // n.cap))
        near.sort(key=lambda n: (-n.used / n.cap, n.key_id))
        return near[:limit], len(near)

    def _unknown(self, tx: Tx, scope: ReadScope, now: datetime) -> tuple[int, int, int]:
        clauses, params = scope.clauses(label="k.label", vendor="k.vendor")
        join = " JOIN vault_keys k ON k.key_id = r.key_id" if clauses else ""
        row = tx.row(
            f"SELECT COUNT(*) AS open_holds, SUM(CASE WHEN {_UNKNOWN} THEN 1 ELSE 0 END) AS unknown, "
            f"CAST(COALESCE(SUM(CASE WHEN {_UNKNOWN} THEN r.reserved_micros ELSE 0 END), 0) AS BIGINT) AS micros "
            f"FROM reservations r{join} WHERE {_OPEN}" + "".join(" AND " + c for c in clauses),
            (_gone_before(now), _gone_before(now), *params))
        return int(row["unknown"] or 0), int(row["micros"] or 0), int(row["open_holds"] or 0)

    def spend_series(self, scope: ReadScope, *, days: int = 7) -> tuple[datetime, list[SpendPoint]]:
        """Spend per hour and vendor over the last `days` days, by the time of the call."""
        with self._database.reading() as tx:
            now = tx.now()
            since = (now - timedelta(days=days)).replace(minute=0, second=0, microsecond=0)
            clauses, params = scope.clauses(label="label", vendor="vendor")
            rows = tx.rows(
                f"SELECT {_HOUR} AS hour, vendor, CAST(SUM(actual_micros) AS BIGINT) AS micros FROM audit "
                f"WHERE {_PRICED} AND {_HOUR} >= ?" + "".join(" AND " + c for c in clauses)
                + f" GROUP BY {_HOUR}, vendor ORDER BY hour, vendor", (to_text(since)[:13], *params))
        return since, [SpendPoint(row["hour"], row["vendor"], int(row["micros"])) for row in rows if row["micros"]]

    # --- runs ---------------------------------------------------------------------------------

    def run_nodes(self, scope: ReadScope, prefix: str = "", *, limit: int = 50, offset: int = 0) -> RunNodes:
        """The rows of the runs tree under `prefix` ("" is the top: it also holds keys issued
        without a label), summed in SQL per row, so a page reads a few rows whatever the label count."""
        position = "instr" if self._database.backend == "sqlite" else "strpos"  # the only dialect difference
        start = len(prefix) + 1
        # The row a label falls under: everything up to the first "/" after the prefix (a group),
        # else the whole rest (a run). A rest starting with "/" is a run too: a group needs a name.
        def node(column: str) -> str:
            rest = f"substr({column}, {start})"
            return f"(CASE WHEN {position}({rest}, '/') > 1 THEN substr({rest}, 1, {position}({rest}, '/')) ELSE {rest} END)"

        def under(column: str) -> tuple[list[str], list]:
            clauses, params = scope.clauses(label=column, vendor=column.replace("label", "vendor"))
            if prefix:
                clauses.append(f"substr({column}, 1, {len(prefix)}) = ?")
                params.append(prefix)
            return clauses, params

        with self._database.reading() as tx:
            now = tx.now()
            clauses, params = under("k.label")
            rows = tx.rows(
                f"SELECT {node('k.label')} AS node, COUNT(DISTINCT k.label) AS runs, "
                f"COUNT(*) AS keys, SUM(CASE WHEN {_ACTIVE} THEN 1 ELSE 0 END) AS active, "
                "SUM(CASE WHEN k.revoked_at IS NOT NULL THEN 1 ELSE 0 END) AS revoked, "
                "SUM(k.spent_micros) AS spent, SUM(k.reserved_micros) AS reserved, SUM(k.calls) AS calls, "
                "SUM(CASE WHEN k.total_cap_micros IS NOT NULL THEN 1 ELSE 0 END) AS capped_keys, "
                "COALESCE(SUM(k.total_cap_micros), 0) AS total_cap, "
                "COALESCE(SUM(CASE WHEN k.total_cap_micros IS NOT NULL THEN k.spent_micros + k.reserved_micros END), 0) "
                "AS capped_spent, MAX(k.created_at) AS last_created, COUNT(DISTINCT k.vendor) AS vendor_count, "
                "MIN(k.vendor) AS first_vendor, MAX(k.vendor) AS last_vendor, COUNT(*) OVER () AS total "
                "FROM vault_keys k" + _where(clauses) + f" GROUP BY {node('k.label')} "
                "ORDER BY last_created DESC, MAX(CASE WHEN k.label IS NULL THEN 1 ELSE 0 END), node DESC "  # NULL last in both
                f"LIMIT {int(limit)} OFFSET {int(offset)}",
                (to_text(now), *params))
            names = [row["node"] for row in rows]
            hits: dict = {}
            if rows:
                audit_clauses, audit_params = under("label")
                for row in tx.rows(
                        f"SELECT {node('label')} AS node, COUNT(*) AS n FROM audit WHERE {_REFUSED} AND decision IN "
                        f"{_CAP_HITS}" + "".join(" AND " + c for c in audit_clauses) + f" GROUP BY {node('label')}",
                        audit_params):
                    hits[row["node"]] = int(row["n"])
        nodes = []
        for row, name in zip(rows, names):
            is_group = name is not None and name.endswith("/")
            nodes.append(RunNode(
                name=name or (prefix if name == "" else "(no label)"),
                label=(prefix + name) if name is not None else None, is_group=is_group,
                runs=int(row["runs"]) if name is not None else 1, keys=int(row["keys"]), active=int(row["active"]),
                revoked=int(row["revoked"]), spent=int(row["spent"]), reserved=int(row["reserved"]),
                calls=int(row["calls"]), capped_keys=int(row["capped_keys"]), total_cap=int(row["total_cap"]),
                capped_spent=int(row["capped_spent"]), cap_hits=hits.get(name, 0), last_created=row["last_created"],
                vendor_count=int(row["vendor_count"]),
                vendors=tuple(dict.fromkeys((row["first_vendor"], row["last_vendor"])))))
        return RunNodes(nodes, int(rows[0]["total"]) if rows else 0)

    def run_keys(self, scope: ReadScope, label: str) -> list[KeyRecord]:
        """A run's visible keys, oldest first (label "": the newest UNLABELLED_KEYS keys issued
        without a label, a bucket that can hold every key of an installation)."""
        keys = self._ledger.list_keys(label=label) if label else self._unlabelled_keys(scope)
        return [k for k in keys if scope.allows(k.spec.label, k.spec.vendor, k.spec.minted_by)]

    def _unlabelled_keys(self, scope: ReadScope) -> list[KeyRecord]:
        clauses, params = scope.clauses(label="label", vendor="vendor")
        with self._database.reading() as tx:
            ids = [row["key_id"] for row in tx.rows(
                "SELECT key_id FROM vault_keys WHERE label IS NULL" + "".join(" AND " + c for c in clauses)
                + f" ORDER BY created_at DESC, key_id DESC LIMIT {UNLABELLED_KEYS}", params)]
        found = [self._ledger.get_key(key_id) for key_id in reversed(ids)]
        return [k for k in found if k is not None]

    def run_spend_series(self, scope: ReadScope, label: str) -> list[SpendPoint]:
        """A run's spend per minute (per hour when there are too many minutes), for its chart."""
        clauses, params = scope.clauses(label="label", vendor="vendor")
        return self._series("label = ?" if label else "label IS NULL", [label] if label else [], clauses, params)

    def key_spend_series(self, key_id: str) -> list[SpendPoint]:
        return self._series("key_id = ?", [key_id], [], [])

    def _series(self, selector: str, selector_params: list, clauses: list[str], params: list) -> list[SpendPoint]:
        where = " AND ".join([selector, _PRICED, *clauses])
        with self._database.reading() as tx:
            for width in (16, 13):  # minute, then hour when there are too many minutes
                bucket = f"substr(ts, 1, {width})"
                rows = tx.rows(f"SELECT {bucket} AS at, CAST(SUM(actual_micros) AS BIGINT) AS micros FROM audit "
                               f"WHERE {where} GROUP BY {bucket} ORDER BY at", (*selector_params, *params))
                if len(rows) <= MAX_CHART_POINTS:
                    break
        return [SpendPoint(row["at"], None, int(row["micros"])) for row in rows]

    # --- a key --------------------------------------------------------------------------------

    def key(self, scope: ReadScope, key_id: str) -> KeyRecord | None:
        record = self._ledger.get_key(key_id)
        if record is None or not scope.allows(record.spec.label, record.spec.vendor, record.spec.minted_by):
            return None
        return record

    def open_holds(self, key_id: str) -> list[dict]:
        return self._ledger.open_reservations(key_id)

    # --- the audit trail ----------------------------------------------------------------------

    def audit_page(self, scope: ReadScope, query: AuditQuery, after: AuditCursor | None = None,
                   rows: int = AUDIT_PAGE_ROWS) -> AuditPage:
        """One page of audit rows, newest first, starting after `after`."""
        sql, params = self._audit_sql(scope, query, after)
        with self._database.reading() as tx:
            found = [dict(row) for row in tx.rows(sql + f" LIMIT {int(rows) + 1}", params)]
        more = len(found) > rows
        found = found[:rows]
        cursor = AuditCursor(found[-1]["ts"], int(found[-1]["id"])) if more and found else None
        return AuditPage(found, cursor)

    def audit_export(self, scope: ReadScope, query: AuditQuery) -> Iterator[list[dict]]:
        """Every matching row, newest first, in chunks: a big export never sits in memory whole,
        and never holds the database between chunks."""
        after = None
        while True:
            page = self.audit_page(scope, query, after, EXPORT_CHUNK_ROWS)
            if page.rows:
                yield page.rows
            if page.next_cursor is None:
                return
            after = page.next_cursor

    def _audit_sql(self, scope: ReadScope, query: AuditQuery, after: AuditCursor | None) -> tuple[str, list]:
        clauses, params = scope.clauses(label="label", vendor="vendor")
        if query.unlabelled:  # keys issued without a label (not refusals of no key at all)
            clauses.append("label IS NULL AND key_id IS NOT NULL")
        for column, value in (("label", query.label), ("key_id", query.key_id), ("vendor", query.vendor)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if query.decision == "refused":
            clauses.append(_REFUSED)
        elif query.decision == "cap_hit":
            clauses += [_REFUSED, f"decision IN {_CAP_HITS}"]
        elif query.decision is not None:
            clauses.append("decision = ?")
            params.append(query.decision)
            if query.decision != "allowed":
                clauses.append(_REFUSED)  # lets a refusal code use the refusals' index
        if query.since is not None:
            clauses.append("ts >= ?")
            params.append(to_text(query.since))
        if query.until is not None:
            clauses.append("ts < ?")
            params.append(to_text(query.until))
        if after is not None:
            clauses.append("(ts < ? OR (ts = ? AND id < ?))")
            params += [after.ts, after.ts, after.id]
        return "SELECT * FROM audit" + _where(clauses) + " ORDER BY ts DESC, id DESC", params

    def recent_calls(self, scope: ReadScope, *, key_id: str | None = None, label: str | None = None,
                     after: AuditCursor | None = None, rows: int = AUDIT_PAGE_ROWS) -> AuditPage:
        """A key's or a run's calls, newest first (label "": the keys issued without a label)."""
        query = AuditQuery(key_id=key_id, label=label or None, unlabelled=label == "")
        return self.audit_page(scope, query, after, rows)

    def run_cap_hits(self, scope: ReadScope, label: str) -> int:
        """How many calls of a run were refused at a cap (label "": keys issued without one)."""
        clauses, params = scope.clauses(label="label", vendor="vendor")
        clauses.insert(0, "label = ?" if label else "label IS NULL")
        if label:
            params.insert(0, label)
        with self._database.reading() as tx:
            row = tx.row(f"SELECT COUNT(*) AS n FROM audit WHERE {_REFUSED} AND decision IN {_CAP_HITS} AND "
                         + " AND ".join(clauses), params)
        return int(row["n"])

    # --- budgets ------------------------------------------------------------------------------

    def budget_key_counts(self) -> dict[str, BudgetKeys]:
        """How many keys spend from each budget directly (not through a child budget)."""
        with self._database.reading() as tx:
            rows = tx.rows(f"SELECT k.budget, COUNT(*) AS key_count, SUM(CASE WHEN {_ACTIVE} THEN 1 ELSE 0 END) "
                           "AS active_count FROM vault_keys k WHERE k.budget IS NOT NULL GROUP BY k.budget",
                           (to_text(tx.now()),))
        return {row["budget"]: BudgetKeys(int(row["key_count"]), int(row["active_count"] or 0)) for row in rows}

    def known_vendors(self, scope: ReadScope) -> list[str]:
        clauses, params = scope.clauses(label="k.label", vendor="k.vendor")
        with self._database.reading() as tx:
            return [row["vendor"] for row in tx.rows("SELECT DISTINCT k.vendor FROM vault_keys k" + _where(clauses)
                                                     + " ORDER BY k.vendor", params)]


def _gone_before(now: datetime) -> str:
    return to_text(now - RUN_GONE_AFTER)


def _where(clauses: Sequence[str]) -> str:
    return " WHERE " + " AND ".join(clauses) if clauses else ""
