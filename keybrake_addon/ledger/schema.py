"""SQLite schema. Amounts are integer USD micros; times are ISO 8601 UTC text."""

SCHEMA_VERSION = 3

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS secrets (
    vendor TEXT NOT NULL,
    name TEXT NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
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
    daily_cap_micros INTEGER,
    total_cap_micros INTEGER,
    max_calls INTEGER,
    allowlist TEXT NOT NULL,
    allow_all INTEGER NOT NULL DEFAULT 0,
    allow_unpriced INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT,
    spent_micros INTEGER NOT NULL DEFAULT 0,
    reserved_micros INTEGER NOT NULL DEFAULT 0,
    calls INTEGER NOT NULL DEFAULT 0,
    -- The daily cap's counters, for the UTC day `day` only: a new day starts them at 0. Keeping
    -- them on the key's row means a reservation writes one row fewer (speed: see BENCHMARKS.md).
    day TEXT,
    day_spent_micros INTEGER NOT NULL DEFAULT 0,
    day_reserved_micros INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS vault_keys_label ON vault_keys (label);
CREATE TABLE IF NOT EXISTS reservations (
    id INTEGER PRIMARY KEY,
    key_id TEXT NOT NULL,
    idempotency_key TEXT,
    endpoint TEXT NOT NULL,
    run_id TEXT,  -- the proxy run that made it (proxy_runs): a pending hold of a dead run is unknown
    day TEXT NOT NULL,
    reserved_micros INTEGER NOT NULL,
    actual_micros INTEGER,
    estimated INTEGER NOT NULL DEFAULT 0,  -- settled at the estimate: the vendor had no price yet
    state TEXT NOT NULL CHECK (state IN ('pending', 'unknown', 'settled', 'released')),
    object_id TEXT,
    created_at TEXT NOT NULL,
    settled_at TEXT,
    UNIQUE (key_id, idempotency_key)
);
CREATE INDEX IF NOT EXISTS reservations_object ON reservations (object_id) WHERE object_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    key_id TEXT,
    label TEXT,
    vendor TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER,
    decision TEXT NOT NULL,
    outcome TEXT,
    reserved_micros INTEGER NOT NULL DEFAULT 0,
    actual_micros INTEGER,
    amount_minor INTEGER,
    currency TEXT,
    object_id TEXT,
    idempotency_key TEXT,
    vendor_request_id TEXT,
    replayed INTEGER NOT NULL DEFAULT 0,
    duration_ms REAL,
    reservation_id INTEGER,
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
