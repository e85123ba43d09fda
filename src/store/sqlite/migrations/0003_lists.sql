-- Operator lists: bans (numbers by blind index, number prefixes, IP networks) and the
-- safe list that bypasses the anti-abuse checks. An entry past `expires_at` no longer
-- applies.
CREATE TABLE abuse_lists (
    id         INTEGER PRIMARY KEY,
    list       TEXT NOT NULL,            -- ban | safe
    kind       TEXT NOT NULL,            -- number (hex blind index) | prefix (E.164 digits) | ip (CIDR)
    value      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER
);
CREATE UNIQUE INDEX abuse_lists_entry ON abuse_lists(list, kind, value);
