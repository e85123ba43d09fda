-- ringfence schema, version 1. Append-only: never edit a migration once released.
-- Times are milliseconds since the Unix epoch (UTC).

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    scopes      TEXT NOT NULL,           -- comma-separated
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

CREATE TABLE services (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    config     TEXT NOT NULL,            -- JSON of verify::ServiceConfig
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- The holder of one phone number. The number exists here only as ciphertext under the
-- subject's own data key; the key only wrapped by the key-encryption key.
CREATE TABLE subjects (
    id           INTEGER PRIMARY KEY,
    blind_index  BLOB NOT NULL UNIQUE,
    wrapped_key  BLOB,                   -- NULL once erased (crypto-shredding)
    phone_ct     BLOB,
    country_code INTEGER NOT NULL,
    region       TEXT,
    number_type  TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    erased_at    INTEGER
);

CREATE TABLE verifications (
    id           TEXT PRIMARY KEY,
    service_id   TEXT NOT NULL REFERENCES services(id),
    subject_id   INTEGER NOT NULL REFERENCES subjects(id),
    status       TEXT NOT NULL,
    channel      TEXT NOT NULL,
    code_hash    BLOB,                   -- NULL once no longer pending
    locale       TEXT,
    account_ref  TEXT,
    purpose      TEXT,
    signals_ct   BLOB,                   -- client signals, sealed under the subject key
    sends        INTEGER NOT NULL,
    max_sends    INTEGER NOT NULL,
    attempts     INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    lockout_ms   INTEGER NOT NULL,
    test_number  INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    last_sent_at INTEGER NOT NULL,
    approved_at  INTEGER
) WITHOUT ROWID;                         -- clustered by id: ids are time-ordered
-- At most one pending verification per number and service, enforced by the database.
CREATE UNIQUE INDEX verifications_one_pending ON verifications(subject_id, service_id) WHERE status = 'pending';
-- The janitor finds pending verifications past their expiry through this index.
CREATE INDEX verifications_pending_expiry ON verifications(expires_at) WHERE status = 'pending';

-- After the last wrong code, a number gets no new verification on that service until
-- `until`.
CREATE TABLE lockouts (
    subject_id INTEGER NOT NULL,
    service_id TEXT NOT NULL,
    until      INTEGER NOT NULL,
    PRIMARY KEY (subject_id, service_id)
) WITHOUT ROWID;

-- Transactional outbox. `payload` (recipient and body, sealed under the subject key)
-- is erased once the message is sent, expired, canceled or failed.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    verification_id TEXT NOT NULL REFERENCES verifications(id),
    subject_id      INTEGER NOT NULL REFERENCES subjects(id),
    channel         TEXT NOT NULL,
    payload         BLOB,
    status          TEXT NOT NULL,       -- queued | sending | sent | retry | failed | expired | canceled
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_until     INTEGER,
    not_after       INTEGER NOT NULL,
    provider_ref    TEXT,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX outbox_due ON outbox(next_attempt_at) WHERE status IN ('queued', 'sending', 'retry');
CREATE INDEX outbox_verification ON outbox(verification_id);

-- An integrator's account bound to a subject. Ended bindings stay as tombstones so the
-- accounts-per-number cap counts them (the index on subject_id makes that cheap).
CREATE TABLE bindings (
    id              INTEGER PRIMARY KEY,
    account_ref     TEXT NOT NULL,
    subject_id      INTEGER NOT NULL REFERENCES subjects(id),
    verification_id TEXT NOT NULL,
    verified_at     INTEGER NOT NULL,
    ended_at        INTEGER,
    end_reason      TEXT
);
CREATE UNIQUE INDEX bindings_live_account ON bindings(account_ref) WHERE ended_at IS NULL;
CREATE INDEX bindings_subject ON bindings(subject_id, verified_at);

CREATE TABLE idempotency_keys (
    api_key_id      TEXT NOT NULL,
    key             TEXT NOT NULL,
    fingerprint     BLOB NOT NULL,
    verification_id TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (api_key_id, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_keys_age ON idempotency_keys(created_at);
