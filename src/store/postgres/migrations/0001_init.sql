-- ringfence schema for PostgreSQL, version 1: the same tables, columns and rules as
-- the SQLite schema (src/store/sqlite/migrations/0001_init.sql). Append-only.
-- Times are milliseconds since the Unix epoch (UTC).

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    secret_hash BYTEA NOT NULL,
    scopes      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE services (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    config     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE subjects (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    blind_index  BYTEA NOT NULL UNIQUE,
    wrapped_key  BYTEA,
    phone_ct     BYTEA,
    country_code INTEGER NOT NULL,
    region       TEXT,
    number_type  TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    erased_at    BIGINT
);

CREATE TABLE verifications (
    id           TEXT PRIMARY KEY,
    service_id   TEXT NOT NULL REFERENCES services(id),
    subject_id   BIGINT NOT NULL REFERENCES subjects(id),
    status       TEXT NOT NULL,
    channel      TEXT NOT NULL,
    code_hash    BYTEA,
    locale       TEXT,
    account_ref  TEXT,
    purpose      TEXT,
    signals_ct   BYTEA,
    sends        INTEGER NOT NULL,
    max_sends    INTEGER NOT NULL,
    attempts     INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    lockout_ms   BIGINT NOT NULL,
    test_number  BOOLEAN NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    last_sent_at BIGINT NOT NULL,
    approved_at  BIGINT
);
CREATE UNIQUE INDEX verifications_one_pending ON verifications(subject_id, service_id) WHERE status = 'pending';
CREATE INDEX verifications_pending_expiry ON verifications(expires_at) WHERE status = 'pending';

CREATE TABLE lockouts (
    subject_id BIGINT NOT NULL,
    service_id TEXT NOT NULL,
    until      BIGINT NOT NULL,
    PRIMARY KEY (subject_id, service_id)
);

CREATE TABLE outbox (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    verification_id TEXT NOT NULL REFERENCES verifications(id),
    subject_id      BIGINT NOT NULL REFERENCES subjects(id),
    channel         TEXT NOT NULL,
    payload         BYTEA,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_until     BIGINT,
    not_after       BIGINT NOT NULL,
    provider_ref    TEXT,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX outbox_due ON outbox(next_attempt_at) WHERE status IN ('queued', 'sending', 'retry');
CREATE INDEX outbox_verification ON outbox(verification_id);

CREATE TABLE bindings (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_ref     TEXT NOT NULL,
    subject_id      BIGINT NOT NULL REFERENCES subjects(id),
    verification_id TEXT NOT NULL,
    verified_at     BIGINT NOT NULL,
    ended_at        BIGINT,
    end_reason      TEXT
);
CREATE UNIQUE INDEX bindings_live_account ON bindings(account_ref) WHERE ended_at IS NULL;
CREATE INDEX bindings_subject ON bindings(subject_id, verified_at);

CREATE TABLE idempotency_keys (
    api_key_id      TEXT NOT NULL,
    key             TEXT NOT NULL,
    fingerprint     BYTEA NOT NULL,
    verification_id TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (api_key_id, key)
);
CREATE INDEX idempotency_keys_age ON idempotency_keys(created_at);
