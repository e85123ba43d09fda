-- Anti-abuse decisions that kept a message from going out (an allowed send is its
-- outbox row). Reasons and factors are codes and non-personal values only.
CREATE TABLE decisions (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at              BIGINT NOT NULL,
    service_id      TEXT NOT NULL,
    verification_id TEXT,                -- the shadow-blocked verification; NULL for a block
    action          TEXT NOT NULL,       -- block | shadow_block
    reasons         TEXT NOT NULL,       -- reason codes, comma-separated
    factors         TEXT NOT NULL,       -- JSON [{"name", "value"}]
    channel         TEXT NOT NULL,
    country_code    INTEGER NOT NULL,
    region          TEXT,
    number_type     TEXT NOT NULL
);
CREATE INDEX decisions_at ON decisions(at);
