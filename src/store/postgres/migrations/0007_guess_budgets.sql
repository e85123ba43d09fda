-- The guess budget of a number on a service (`abuse.limits.wrong_codes_per_number`),
-- kept beside the verifications: check batches read it with the verifications they
-- check and write it with them, in the statement that writes a verification only if it
-- is still as read (src/store/postgres/checks.rs). So it is exact across instances
-- without the counters, and enforced when Redis is down. `tat_us` is the GCRA
-- theoretical arrival time in µs; a row whose time has passed means what no row means
-- (the budget is whole), and the sweeper deletes it.
CREATE TABLE guess_budgets (
    subject_id BIGINT NOT NULL,
    service_id TEXT NOT NULL,
    tat_us     BIGINT NOT NULL,
    PRIMARY KEY (subject_id, service_id)
);
CREATE INDEX guess_budgets_tat ON guess_budgets(tat_us);
