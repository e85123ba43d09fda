//! ringfence: phone verification, anti-abuse, consent and privacy rights for
//! platforms that ask their users for a phone number.
//!
//! The modules are named after what the product does; see `docs/architecture.md`.

pub mod cli;
pub mod clock;
pub mod crypto;
pub mod store;
pub mod verify;
