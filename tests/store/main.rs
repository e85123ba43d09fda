//! The storage conformance suite: every operation of `ringfence::store::Store`, written
//! once against the trait and run on every backend `backend::backends()` lists —
//! SQLite always, PostgreSQL whenever `RINGFENCE_TEST_POSTGRES_URL` is set.
//!
//! Each test receives a fresh, empty store with its own keys (`backend::each_backend`)
//! and drives time by hand: the store takes `now` as a parameter, so expiry, cooldowns,
//! leases and lockouts are reached by passing a later `Millis`, never by sleeping.
//! Assertions go through the trait wherever it can show the effect; what it cannot
//! (erased payloads, code hashes, row counts) is read through the backend's own
//! `Inspect`, kept apart so each backend supplies one.

mod backend;
mod fixtures;
mod postgres;
mod postgres_batches;
mod sqlite;

mod api_keys;
mod batching;
mod bindings;
mod check;
mod concurrency;
mod decisions;
mod health;
mod outbox;
mod services;
mod start;
mod sweep;
mod verifications;
