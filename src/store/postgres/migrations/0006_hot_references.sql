-- The references a start writes are kept by the store, not by foreign keys.
--
-- A foreign key check runs per inserted row and takes a row lock (FOR KEY SHARE) on
-- the row referenced, which writes that row: a start inserts a verification and its
-- message, so four checks and four locks a start. Every start of every instance locks
-- the same row of its service, and concurrent lockers of one row make PostgreSQL
-- create a new multixact each time. Measured under the load of starts, the checks
-- took about a quarter of PostgreSQL's CPU per start (docs/BENCHMARKS.md).
--
-- What the keys guarded holds without them: services, subjects, verifications and
-- messages are never deleted; a start's subject, verification and message are written
-- together in one transaction, and a start naming a service that does not exist fails
-- alone (the start batch reads its services, src/store/postgres/starts.rs). Whatever
-- deletes such rows later must delete what refers to them first. SQLite keeps these
-- keys: it checks them with a look-up and no lock.
ALTER TABLE verifications
    DROP CONSTRAINT verifications_service_id_fkey,
    DROP CONSTRAINT verifications_subject_id_fkey;
ALTER TABLE outbox
    DROP CONSTRAINT outbox_verification_id_fkey,
    DROP CONSTRAINT outbox_subject_id_fkey;
