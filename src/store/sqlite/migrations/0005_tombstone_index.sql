-- The janitor finds tombstones (ended bindings) past their retention through this
-- index instead of reading every binding.
CREATE INDEX bindings_tombstones ON bindings(verified_at) WHERE ended_at IS NOT NULL;
