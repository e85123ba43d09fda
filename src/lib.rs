//! ringfence: phone verification, anti-abuse, consent and privacy rights for
//! platforms that ask their users for a phone number.
//!
//! The modules are named after what the product does; see `docs/architecture.md`.

pub mod abuse;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod counters;
pub mod crypto;
pub mod delivery;
pub mod http;
pub mod store;
pub mod verify;
