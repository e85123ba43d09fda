-- The due index's predicate as comparisons joined by OR instead of an IN list. SQLite
-- evaluates a partial index's predicate on every insert into the outbox and every
-- update of a message's status, and it evaluates an IN list of three or more values by
-- building a temporary B-tree each time. The queries that read through this index
-- repeat the predicate in the same form, which is how SQLite's planner recognises it.
DROP INDEX outbox_due;
CREATE INDEX outbox_due ON outbox(next_attempt_at)
    WHERE status = 'queued' OR status = 'sending' OR status = 'retry';
