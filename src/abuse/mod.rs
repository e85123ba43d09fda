//! The anti-abuse engine: before any message is sent, a [`Decision`] — allow, block, or
//! shadow-block (answer as if sent, send nothing) — with machine-readable reasons and
//! the risk factors behind them.
//!
//! What it weighs: the service's [`policy::AbusePolicy`] (number types per channel,
//! regions per channel, rate limits on every key an attacker can vary), and the
//! SMS-pumping detector ([`pumping`]) that watches conversion per number prefix. State
//! lives in the [`counters`](crate::counters), so every decision is the same on every
//! instance that shares them. The checks that cost nothing come first; counters are
//! touched only for a request that passed them. Test numbers never reach the engine.
//! Nothing here logs by itself: calls return their decisions and events, and the caller
//! records them. No phone number enters a counter key: keys hold blind indexes,
//! keyed pseudonyms, prefixes and country codes.

pub mod engine;
pub mod lists;
pub mod policy;
pub mod pumping;

pub use engine::{Action, Decision, Engine, LimitState, Reason, SendContext};
pub use policy::AbusePolicy;
