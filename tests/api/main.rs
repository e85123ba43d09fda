//! The HTTP API, end to end: every test starts its own instance (`helpers::spawn_app`)
//! and talks to it over real HTTP, as an integrator would. One binary for the whole
//! suite, so it links once.

mod helpers;

mod abuse;
mod concurrency;
mod counters;
mod crash;
mod errors;
mod expiry;
mod idempotency;
mod janitor;
mod limits;
mod ops;
mod privacy;
mod services;
mod verifications;
