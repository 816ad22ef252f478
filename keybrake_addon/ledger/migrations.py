"""The ledger's schema, as numbered migrations for both backends.

A new database gets every migration; an older one gets those it lacks, by `keybrake db
upgrade`. Version 3 is the schema every home made before migrations existed already has, so
it is the baseline: a home from that time upgrades in place.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sqlite: str
    postgresql: str

    def script(self, backend: str) -> str:
        return self.sqlite if backend == "sqlite" else self.postgresql


_BASELINE = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS secrets (
    vendor TEXT NOT NULL,
    name TEXT NOT NULL,
    nonce {blob} NOT NULL,
    ciphertext {blob} NOT NULL,
    fingerprint TEXT NOT NULL,
    account_sid TEXT,
    auth_user TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (vendor, name)
);
CREATE TABLE IF NOT EXISTS vault_keys (
    key_id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    vendor TEXT NOT NULL,
    secret_name TEXT NOT NULL,
    label TEXT,
    daily_cap_micros BIGINT,
    total_cap_micros BIGINT,
    max_calls BIGINT,
    allowlist TEXT NOT NULL,
    allow_all INTEGER NOT NULL DEFAULT 0,
    allow_unpriced INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT,
    spent_micros BIGINT NOT NULL DEFAULT 0,
    reserved_micros BIGINT NOT NULL DEFAULT 0,
    calls BIGINT NOT NULL DEFAULT 0,
    -- The daily cap's counters, for the UTC day `day` only: a new day starts them at 0. Keeping
    -- them on the key's row means a reservation writes one row fewer.
    day TEXT,
    day_spent_micros BIGINT NOT NULL DEFAULT 0,
    day_reserved_micros BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS vault_keys_label ON vault_keys (label);
CREATE TABLE IF NOT EXISTS reservations (
    id {id} PRIMARY KEY,
    key_id TEXT NOT NULL,
    idempotency_key TEXT,
    endpoint TEXT NOT NULL,
    run_id TEXT,  -- the proxy run that made it (proxy_runs): a pending hold of a dead run is unknown
    day TEXT NOT NULL,
    reserved_micros BIGINT NOT NULL,
    actual_micros BIGINT,
    estimated INTEGER NOT NULL DEFAULT 0,  -- settled at the estimate: the vendor had no price yet
    state TEXT NOT NULL CHECK (state IN ('pending', 'unknown', 'settled', 'released')),
    object_id TEXT,
    created_at TEXT NOT NULL,
    settled_at TEXT,
    UNIQUE (key_id, idempotency_key)
);
CREATE INDEX IF NOT EXISTS reservations_object ON reservations (object_id) WHERE object_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS audit (
    id {id} PRIMARY KEY,
    ts TEXT NOT NULL,
    key_id TEXT,
    label TEXT,
    vendor TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER,
    decision TEXT NOT NULL,
    outcome TEXT,
    reserved_micros BIGINT NOT NULL DEFAULT 0,
    actual_micros BIGINT,
    amount_minor BIGINT,
    currency TEXT,
    object_id TEXT,
    idempotency_key TEXT,
    vendor_request_id TEXT,
    replayed INTEGER NOT NULL DEFAULT 0,
    duration_ms {real},
    reservation_id BIGINT,
    message TEXT
);
CREATE TABLE IF NOT EXISTS proxy_runs (
    run_id TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    started_at TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL,
    stopped_at TEXT
);
CREATE TABLE IF NOT EXISTS issuances (
    idempotency_key TEXT PRIMARY KEY,
    request_fingerprint TEXT NOT NULL,
    key_id TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS admin_tokens (
    token_id TEXT PRIMARY KEY,
    name TEXT,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE INDEX IF NOT EXISTS audit_label_ts ON audit (label, ts);
CREATE INDEX IF NOT EXISTS audit_key_ts ON audit (key_id, ts);
"""

# PostgreSQL: ids come from sequences, so a batch can take its ids in one round trip.
_POSTGRES_SEQUENCES = """
CREATE SEQUENCE IF NOT EXISTS reservations_id_seq OWNED BY reservations.id;
ALTER TABLE reservations ALTER COLUMN id SET DEFAULT nextval('reservations_id_seq');
CREATE SEQUENCE IF NOT EXISTS audit_id_seq OWNED BY audit.id;
ALTER TABLE audit ALTER COLUMN id SET DEFAULT nextval('audit_id_seq');
"""

_ATTEMPTS = """
ALTER TABLE reservations ADD COLUMN attempts_open INTEGER NOT NULL DEFAULT 0;
ALTER TABLE reservations ADD COLUMN released_attempts INTEGER NOT NULL DEFAULT 0;
-- A pending hold was admitted by one attempt whose answer has not been settled.
UPDATE reservations SET attempts_open = 1 WHERE state = 'pending';
-- "Already counted" is looked up per key now: the index follows, and the old one goes (one
-- index fewer to write per settlement).
CREATE INDEX IF NOT EXISTS reservations_key_object ON reservations (key_id, object_id) WHERE object_id IS NOT NULL;
DROP INDEX IF EXISTS reservations_object;
"""

# Credentials for the forward proxy (Proxy-Authorization), kept apart from admin tokens: a
# worker that may tunnel through the proxy must not be able to issue keys.
_WORKER_TOKENS = """
CREATE TABLE IF NOT EXISTS worker_tokens (
    token_id TEXT PRIMARY KEY,
    name TEXT,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
"""

# Scoped issuers. An admin token's `scope` is JSON (vault/scopes.py reads it): NULL is an
# unrestricted token, as every token made before this version stays. A key remembers the admin
# token that minted it (NULL: the CLI, or minted before this version), so a scoped token sees
# only its own keys. Issuance idempotency records belong to a token: the same Idempotency-Key
# from another token is another record. A record made before this version names no token; it
# gets the issuer 'unattributed', which only an unrestricted token replays (every token that
# could have made it was unrestricted), never a scoped one.
_SCOPED_ISSUERS = """
ALTER TABLE admin_tokens ADD COLUMN scope TEXT;
ALTER TABLE vault_keys ADD COLUMN minted_by TEXT;
CREATE INDEX IF NOT EXISTS vault_keys_minted_by ON vault_keys (minted_by) WHERE minted_by IS NOT NULL;
CREATE TABLE issuances_by_token (
    token_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_fingerprint TEXT NOT NULL,
    key_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (token_id, idempotency_key)
);
INSERT INTO issuances_by_token (token_id, idempotency_key, request_fingerprint, key_id, created_at)
    SELECT 'unattributed', idempotency_key, request_fingerprint, key_id, created_at FROM issuances;
DROP TABLE issuances;
ALTER TABLE issuances_by_token RENAME TO issuances;
"""

# Budgets that nest: a key may spend from a budget, a budget from its parent. Each budget row
# carries the same counters as a key's (the sum of its keys' and child budgets'), so an admit
# checks a budget's caps by reading one row. No foreign keys: budgets are never deleted and a
# parent never changes (the code checks both exist), and `keybrake db copy` writes tables in any order.
_BUDGETS = """
CREATE TABLE IF NOT EXISTS budgets (
    name TEXT PRIMARY KEY,
    parent TEXT,
    daily_cap_micros BIGINT,
    total_cap_micros BIGINT,
    created_at TEXT NOT NULL,
    frozen_at TEXT,
    spent_micros BIGINT NOT NULL DEFAULT 0,
    reserved_micros BIGINT NOT NULL DEFAULT 0,
    calls BIGINT NOT NULL DEFAULT 0,
    day TEXT,
    day_spent_micros BIGINT NOT NULL DEFAULT 0,
    day_reserved_micros BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS budgets_parent ON budgets (parent) WHERE parent IS NOT NULL;
ALTER TABLE vault_keys ADD COLUMN budget TEXT;
CREATE INDEX IF NOT EXISTS vault_keys_budget ON vault_keys (budget) WHERE budget IS NOT NULL;
"""

# What `keybrake audit prune` keeps of the rows it deletes: per UTC day, vendor and key ('' for
# calls made with no known key), the counts and settled spend `keybrake spend` reports. Label and
# vendor are the key's, so a total still groups by them once the key's rows are gone.
_DAILY_TOTALS = """
CREATE TABLE IF NOT EXISTS daily_totals (
    day TEXT NOT NULL,
    vendor TEXT NOT NULL,
    key_id TEXT NOT NULL,
    label TEXT,
    calls BIGINT NOT NULL DEFAULT 0,
    allowed BIGINT NOT NULL DEFAULT 0,
    refused BIGINT NOT NULL DEFAULT 0,
    cap_hits BIGINT NOT NULL DEFAULT 0,
    spent_micros BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (day, vendor, key_id)
);
CREATE INDEX IF NOT EXISTS daily_totals_label ON daily_totals (label, day);
"""

# The holds not yet settled, and only those: the metrics read them at every scrape, and a key's
# unknown holds are found through them, without scanning every reservation ever made.
_OPEN_RESERVATIONS = """
CREATE INDEX IF NOT EXISTS reservations_open ON reservations (key_id) WHERE state IN ('pending', 'unknown');
"""

# The dashboard's sign-ins, shared by every replica (so a sign-out or a revoked admin token ends a
# session everywhere), and the indexes its pages read through. Most are partial, so the vendor
# call's path writes little more: refused rows only; open holds only (a hold leaves that index
# when it settles); priced answers only; settled holds only.
_DASHBOARD = """
CREATE TABLE IF NOT EXISTS dashboard_sessions (
    session_hash TEXT PRIMARY KEY,  -- SHA-256 of the cookie's secret: the cookie itself is never stored
    token_id TEXT NOT NULL,  -- the admin token that signed in: revoking it ends the session
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dashboard_sessions_expiry ON dashboard_sessions (expires_at);
-- The audit page, newest first, and its time filters.
CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts);
-- Refusals and cap hits: today's, and per run label.
CREATE INDEX IF NOT EXISTS audit_refused_ts ON audit (ts, decision) WHERE decision <> 'allowed';
CREATE INDEX IF NOT EXISTS audit_refused_label ON audit (label, decision) WHERE decision <> 'allowed';
-- Spend per hour and vendor, summed in the index's own order (ts too, so SQLite reads the index
-- alone: before 3.41 it does not cover a query with an expression index lacking the column).
CREATE INDEX IF NOT EXISTS audit_spend ON audit ((substr(ts, 1, 13)), vendor, actual_micros, ts)
    WHERE actual_micros <> 0;
-- Open holds, and which of them nobody will settle.
DROP INDEX IF EXISTS reservations_open;  -- version 9's, on key_id alone: this one serves its readers too
CREATE INDEX reservations_open ON reservations (key_id, state, run_id, reserved_micros)
    WHERE state IN ('pending', 'unknown');
-- A key's settled spend from one day on (this month's, for keys made before the month).
CREATE INDEX IF NOT EXISTS reservations_settled ON reservations (key_id, day, actual_micros) WHERE state = 'settled';
"""

# A Stripe key may act for one Connect connected account: requests must carry that Stripe-Account.
_STRIPE_ACCOUNT = """
ALTER TABLE vault_keys ADD COLUMN stripe_account TEXT;
"""

# Alerts (see ledger/alert_events.py and ledger/alert_store.py). An event is written to the outbox
# in the transaction of the money movement that caused it; `identity` says which crossing, cap
# hit or revocation it is, so the same one can never be written twice. Deliveries are the outbox's
# work list: one row per event and subscription, claimed by one deliverer at a time.
_ALERTS = """
CREATE TABLE IF NOT EXISTS alert_subscriptions (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT NOT NULL,  -- a JSON list of event types
    thresholds TEXT NOT NULL,  -- a JSON list of percents of a cap
    label_prefix TEXT,
    vendor TEXT,
    format TEXT NOT NULL CHECK (format IN ('standard', 'slack')),
    secret_nonce {blob} NOT NULL,  -- the signing secret, sealed under the master key like vendor secrets
    secret_ciphertext {blob} NOT NULL,
    allow_private INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    removed_at TEXT
);
CREATE TABLE IF NOT EXISTS alert_events (
    id TEXT PRIMARY KEY,  -- evt_ and a hash of identity: the webhook-id every delivery of it carries
    kind TEXT NOT NULL,
    identity TEXT NOT NULL UNIQUE,
    key_id TEXT,
    occurred_at TEXT NOT NULL,
    payload TEXT NOT NULL  -- the exact body sent (and signed) on every attempt
);
CREATE TABLE IF NOT EXISTS alert_deliveries (
    id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed', 'cancelled')),
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    next_attempt_at TEXT NOT NULL,
    give_up_at TEXT NOT NULL,
    lease TEXT,  -- the claim of the deliverer sending it now; its result is recorded only under it
    last_attempt_at TEXT,
    last_status INTEGER,
    last_error TEXT,
    delivered_at TEXT,
    UNIQUE (event_id, subscription_id)
);
CREATE INDEX IF NOT EXISTS alert_deliveries_due ON alert_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS alert_events_occurred ON alert_events (occurred_at);
-- The proxy runs whose pending holds were swept into reservation.unknown events.
CREATE TABLE IF NOT EXISTS alert_swept_runs (
    run_id TEXT PRIMARY KEY,
    swept_at TEXT NOT NULL
);
-- The housekeeper looks for keys that expired with money reserved; only key creation writes it.
CREATE INDEX IF NOT EXISTS vault_keys_expires ON vault_keys (expires_at);
"""

# A receiver's URL can be its credential (a Slack webhook's path is): sealed under the master key
# like the signing secret. `url` keeps only what lists show (scheme, host, the first path segments).
# Rows from before stay readable as they are until the proxy seals them at its next start.
_SEALED_ALERT_URLS = """
ALTER TABLE alert_subscriptions ADD COLUMN url_nonce {blob};
ALTER TABLE alert_subscriptions ADD COLUMN url_ciphertext {blob};
"""

# A retry's reservation is found by its key and Idempotency-Key. With the key first in the
# unique index, PostgreSQL could plan that lookup (generically, while the table was small) as the
# key's every reservation, filtered: each admit then read the key's whole history. With the
# Idempotency-Key first, no index finds rows by key alone, so any plan reads only the rows that
# share the Idempotency-Key. SQLite plans the lookup on both columns and keeps its index.
_IDEMPOTENCY_FIRST_POSTGRES = """
ALTER TABLE reservations DROP CONSTRAINT reservations_key_id_idempotency_key_key;
ALTER TABLE reservations ADD CONSTRAINT reservations_idempotency_key_key_id_key UNIQUE (idempotency_key, key_id);
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(3, "the baseline: secrets, vault keys, reservations, audit, proxy runs, admin tokens",
              _BASELINE.format(blob="BLOB", id="INTEGER", real="REAL"),
              _BASELINE.format(blob="BYTEA", id="BIGINT", real="DOUBLE PRECISION") + _POSTGRES_SEQUENCES),
    Migration(4, "reservations count their attempts in flight (a hold stays until every attempt answered)",
              _ATTEMPTS, _ATTEMPTS),
    Migration(5, "worker tokens: credentials for the forward proxy", _WORKER_TOKENS, _WORKER_TOKENS),
    Migration(6, "scoped issuers: admin token scopes, the token that minted each key, idempotency per token",
              _SCOPED_ISSUERS, _SCOPED_ISSUERS),
    Migration(7, "budgets that nest: caps shared by many keys, checked in the same transaction",
              _BUDGETS, _BUDGETS),
    Migration(8, "daily totals: what `keybrake audit prune` keeps of the rows it deletes", _DAILY_TOTALS,
              _DAILY_TOTALS),
    Migration(9, "an index of the open reservations (metrics read them at every scrape)",
              _OPEN_RESERVATIONS, _OPEN_RESERVATIONS),
    Migration(10, "the dashboard: sign-in sessions, and indexes for its pages", _DASHBOARD, _DASHBOARD),
    Migration(11, "vault keys may act for one Stripe Connect account (Stripe-Account)", _STRIPE_ACCOUNT,
              _STRIPE_ACCOUNT),
    Migration(12, "alerts: subscriptions, the outbox of events and their deliveries",
              _ALERTS.format(blob="BLOB"), _ALERTS.format(blob="BYTEA")),
    Migration(13, "alert receivers' URLs sealed under the master key (a Slack webhook URL is a credential)",
              _SEALED_ALERT_URLS.format(blob="BLOB"), _SEALED_ALERT_URLS.format(blob="BYTEA")),
    Migration(14, "PostgreSQL finds a retry's reservation by its Idempotency-Key first, never by reading "
              "the key's every reservation", "", _IDEMPOTENCY_FIRST_POSTGRES),
)
LATEST = MIGRATIONS[-1].version


def pending(current: int | None) -> list[Migration]:
    """The migrations a database at `current` lacks (None: an empty database)."""
    return [m for m in MIGRATIONS if current is None or m.version > current]


class SchemaMismatch(Exception):
    """The database's schema is not the one this Keybrake reads. Not a passing trouble: starting
    must stop and say what to do."""


def require_current(found: int | None, where: str) -> None:
    if found == LATEST:
        return
    if found is None:
        raise SchemaMismatch(f"{where} has no Keybrake schema; run `keybrake init` (or `keybrake db upgrade`)")
    if found < LATEST:
        raise SchemaMismatch(
            f"{where} has schema version {found}; this Keybrake reads version {LATEST}. "
            "Back it up, then run `keybrake db upgrade` (`keybrake db status` lists what it will apply).")
    raise SchemaMismatch(f"{where} has schema version {found}, newer than this Keybrake reads ({LATEST}). "
                         "Use the Keybrake release that upgraded it.")


# --- applying them: the same for both backends; a transaction knows its own dialect -------------

def schema_version(tx) -> int | None:
    """The schema version a database records; None for an empty database."""
    if not tx.has_table("meta"):
        return None
    row = tx.row("SELECT value FROM meta WHERE name = 'schema_version'")
    return int(row["value"]) if row else None


def apply(tx, todo: list[Migration]) -> None:
    for migration in todo:
        tx.script(migration.script(tx.backend))
        tx.run("INSERT INTO meta (name, value) VALUES ('schema_version', ?) "
               "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (str(migration.version),))


def ensure_schema(database) -> None:
    """Create the schema in an empty database; refuse one that needs `keybrake db upgrade`."""
    with database.transaction() as tx:
        tx.lock_schema()
        if schema_version(tx) is None:
            apply(tx, pending(None))
            return
    check_schema(database)


def check_schema(database) -> None:
    with database.reading() as tx:
        found = schema_version(tx)
    require_current(found, database.where)


def upgrade(database) -> list[Migration]:
    """Apply what the database lacks, in one transaction; returns it (empty: it was current)."""
    with database.transaction() as tx:
        tx.lock_schema()  # on PostgreSQL, also lifts the statement timeout: an index rebuild takes what it takes
        todo = pending(schema_version(tx))
        apply(tx, todo)
        return todo
