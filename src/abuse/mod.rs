//! The anti-abuse engine: detectors that watch traffic and decide, before a message
//! is sent, whether it may go. Each part is a small module with its own policy and
//! its own reason codes; state lives in the [`counters`](crate::counters), so every
//! decision is the same on every instance that shares them. Nothing here logs or
//! emits by itself: calls return their verdicts and events, and the caller records
//! them. No phone number ever enters these modules, only prefixes and country codes.

pub mod pumping;
