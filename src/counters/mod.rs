//! Rate-limit and velocity state: the short-lived numbers behind every "too many".
//!
//! The anti-abuse engine asks two kinds of question here, and nothing else:
//!
//! * **Is this request within its rate?** — [`Counters::gcra`], the Generic Cell Rate
//!   Algorithm (as in redis-cell and the IETF RateLimit header drafts). A [`Rate`] of
//!   `limit` per `period_ms` admits a burst of `limit` at once and then one request
//!   every `period_ms / limit`. Each key holds a single number, its *theoretical
//!   arrival time* (TAT), so a key costs the same whatever its rate. The decision
//!   carries what the HTTP edge needs for `RateLimit` and `Retry-After` headers. A
//!   refused request does not consume: a client hammering a closed door does not push
//!   its own reopening further away (the caller adds penalties explicitly if it wants
//!   them).
//! * **How many times did this happen lately?** — [`Counters::incr_window`] and
//!   [`Counters::get_window`], fixed-window counters (sends and approvals per number
//!   prefix, for the SMS-pumping detector), and [`Counters::get_sliding`], the usual
//!   sliding-window estimate from the current and the previous window.
//! * **Is this marked?** — [`Counters::put_if_absent`] and [`Counters::get_value`], a
//!   short value under a key until an expiry (a closed number prefix and why, for the
//!   SMS-pumping detector). Of several callers racing to store, exactly one stores,
//!   so exactly one of them reports the event.
//!
//! ## Guarantees
//!
//! * Every operation on one key is atomic, on every backend and across instances that
//!   share the backend: 200 concurrent requests against a burst of 50 admit exactly 50.
//! * Time comes only from the caller's `now` (milliseconds, from a
//!   [`Clock`](crate::clock::Clock)); no backend reads its own clock to decide. Tests
//!   drive time with a manual clock, and several instances sharing Redis must keep
//!   their clocks synchronised (NTP): a skew of *s* ms between instances lets a key
//!   gain or lose up to *s* ms of refill. Expiry of stored state is garbage collection
//!   only — an expired key and a key whose TAT has passed mean the same thing — and is
//!   always given *relative* to the caller's `now`, so the backend's own clock does
//!   not matter. A window's count is kept until one window *after* its end, since the
//!   sliding estimate still reads it then. A stored value carries its expiry in
//!   caller time, so it reads as absent from that `now` on, whatever the backend's
//!   own clock says.
//! * When the backend cannot answer, operations return [`CountersError::Unavailable`]
//!   quickly (the Redis backend bounds every command by a timeout). Callers **fail
//!   closed**: a limit that cannot be checked is treated as exceeded.
//! * Memory is bounded: the in-process backend holds at most a configured number of
//!   keys and evicts the key closest to its natural expiry first (see
//!   [`memory`]); for Redis, run it with `maxmemory` and
//!   `maxmemory-policy volatile-ttl`, which is the same rule.
//!
//! ## Keys never hold personal data
//!
//! Keys are visible to whoever can read the backend (Redis `MONITOR`, dumps, memory).
//! Callers therefore build them from pseudonyms: the blind index of a number (or of
//! its prefix), a hashed IP /64, an account's keyed hash, a country *code* (`cc:44`).
//! A raw E.164 number is never a key. As a safety net, keys that look like one (a `+`
//! followed by a digit) are refused with [`CountersError::InvalidKey`], and error
//! messages never repeat the key. Stored values follow the same rule (and the same
//! check, [`check_value`]).
//!
//! ## GCRA, in one place
//!
//! The arithmetic lives in [`gcra_step`], a pure function. The memory backend calls it
//! under its lock; the Redis backend runs a Lua script that applies the *same* rule
//! (`tat = max(stored, now)`, `new_tat = tat + interval * cost`, admit iff
//! `new_tat - burst <= now`) to integers that Rust computed ([`Rate::interval_us`],
//! [`Rate::burst_us`]), returns the TAT it saw, and Rust then builds the decision with
//! [`gcra_step`] from that TAT. So the two backends cannot drift apart in how they
//! round, and the Lua side only adds and compares integers below 2^53, which Lua's
//! doubles represent exactly. TATs are kept in microseconds so that rates such as
//! 3 per second need no fractional milliseconds.

pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::join_all;

use crate::clock::Millis;

pub use memory::MemoryCounters;
pub use redis::RedisCounters;

/// The longest rate period or window accepted; longer values are clamped to it.
pub const MAX_PERIOD_MS: i64 = 366 * 24 * 3600 * 1000;

/// The longest value [`Counters::put_if_absent`] accepts, in bytes.
pub const MAX_VALUE_LEN: usize = 200;

/// The longest key accepted, in bytes. Keys are hashes and short tags, so this only
/// stops a caller bug from turning into unbounded memory.
pub const MAX_KEY_LEN: usize = 200;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CountersError {
    /// The backend cannot be reached or did not answer in time. Callers fail closed.
    #[error("counters unavailable: {0}")]
    Unavailable(String),
    /// The key is empty, too long, or looks like a raw phone number. The key itself is
    /// never repeated, since it may be exactly what must not be logged.
    #[error("invalid counter key: {0}")]
    InvalidKey(&'static str),
    /// A window of zero or negative length.
    #[error("invalid counter argument: {0}")]
    InvalidArgument(&'static str),
    /// The backend answered something this code does not understand.
    #[error("counters backend error: {0}")]
    Backend(String),
}

pub type CountersResult<T> = Result<T, CountersError>;

/// `limit` requests per `period_ms`, all of which may come at once (the burst).
///
/// A `limit` of 0 refuses everything. `period_ms` is clamped to
/// `1..=MAX_PERIOD_MS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub limit: u32,
    pub period_ms: i64,
}

impl Rate {
    pub const fn new(limit: u32, period_ms: i64) -> Self {
        Self { limit, period_ms }
    }

    pub const fn per_second(limit: u32) -> Self {
        Self::new(limit, 1000)
    }

    pub const fn per_minute(limit: u32) -> Self {
        Self::new(limit, 60 * 1000)
    }

    pub const fn per_hour(limit: u32) -> Self {
        Self::new(limit, 3600 * 1000)
    }

    pub const fn per_day(limit: u32) -> Self {
        Self::new(limit, 24 * 3600 * 1000)
    }

    fn period_us(self) -> i64 {
        self.period_ms.clamp(1, MAX_PERIOD_MS) * 1000
    }

    /// The emission interval *T* in microseconds: `period / limit`, rounded up (so
    /// rounding never admits more than the stated rate), at least 1. For a limit of 0
    /// it is the whole period.
    pub fn interval_us(self) -> i64 {
        let period = self.period_us();
        match i64::from(self.limit) {
            0 => period,
            limit => ((period + limit - 1) / limit).max(1),
        }
    }

    /// The burst tolerance in microseconds: `limit * T`, how far ahead of `now` the TAT
    /// may run while still admitting.
    pub fn burst_us(self) -> i64 {
        self.interval_us() * i64::from(self.limit)
    }
}

/// The answer to one GCRA request, enough for `RateLimit-*` and `Retry-After` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraDecision {
    pub allowed: bool,
    /// The burst size of the rate that was applied.
    pub limit: u32,
    /// Requests that would still be admitted right now, after this one.
    pub remaining: u32,
    /// When refused: milliseconds until this request would be admitted (rounded up).
    /// `None` when allowed. For a request costing more than the whole burst it is only
    /// a hint: such a request is never admitted.
    pub retry_after_ms: Option<i64>,
    /// Milliseconds until the key is back to its full burst (rounded up; 0 = full).
    pub reset_after_ms: i64,
}

/// One GCRA step: given the stored TAT (µs since the epoch; `None` if the key is
/// unknown or expired), the rate, the caller's `now` (ms) and the request's cost,
/// returns the decision and the TAT to store — `None` when nothing must be written,
/// which is the case for every refusal (a refused request does not consume).
///
/// The Redis Lua script applies exactly this rule; see the module docs.
pub fn gcra_step(
    tat: Option<i64>,
    rate: Rate,
    now: Millis,
    cost: u32,
) -> (GcraDecision, Option<i64>) {
    let now_us = now.saturating_mul(1000);
    let interval = rate.interval_us();
    let burst = rate.burst_us();
    let tat = tat.map_or(now_us, |t| t.max(now_us));
    let new_tat = tat.saturating_add(interval.saturating_mul(i64::from(cost)));
    let allow_at = new_tat - burst;
    // Requests still admissible when the TAT is `t`: how many intervals fit between
    // `t` and `now + burst`. Clamped, since a key used with a smaller rate earlier may
    // run further ahead than this rate's burst.
    let remaining_at = |t: i64| -> u32 {
        let free = (burst - (t - now_us)).max(0);
        u32::try_from(free / interval).unwrap_or(u32::MAX)
    };
    if allow_at <= now_us {
        let decision = GcraDecision {
            allowed: true,
            limit: rate.limit,
            remaining: remaining_at(new_tat),
            retry_after_ms: None,
            reset_after_ms: ceil_ms(new_tat - now_us),
        };
        (decision, Some(new_tat))
    } else {
        let decision = GcraDecision {
            allowed: false,
            limit: rate.limit,
            remaining: remaining_at(tat),
            retry_after_ms: Some(ceil_ms(allow_at - now_us)),
            reset_after_ms: ceil_ms(tat - now_us),
        };
        (decision, None)
    }
}

fn ceil_ms(us: i64) -> i64 {
    if us <= 0 {
        0
    } else {
        (us + 999) / 1000
    }
}

/// The index of the fixed window that contains `now`, and the milliseconds left in
/// it. Windows are aligned to the epoch, so every instance agrees on them.
pub fn window_of(window_ms: i64, now: Millis) -> (i64, i64) {
    let index = now.div_euclid(window_ms);
    let left = (index + 1) * window_ms - now;
    (index, left)
}

/// The sliding window's estimate: the current fixed window's count plus the previous
/// one's, weighed by how much of it the sliding window still overlaps.
fn sliding_estimate(current: u64, previous: u64, window_ms: i64, now: Millis) -> u64 {
    let (_, left) = window_of(window_ms, now);
    // The previous window overlaps the sliding one by `left` ms out of `window_ms`.
    let weighted = (u128::from(previous) * left as u128).div_ceil(window_ms as u128);
    current.saturating_add(u64::try_from(weighted).unwrap_or(u64::MAX))
}

/// What [`Counters::gcra_all`] gives back once the limits are spent: nothing when every
/// one admitted, otherwise each limit that did admit (a refusal spent nothing).
fn to_give_back<'a, 'k>(
    limits: &'a [(&'k str, Rate)],
    spent: &'a [GcraDecision],
) -> impl Iterator<Item = &'a (&'k str, Rate)> {
    let refused = spent.iter().any(|d| !d.allowed);
    limits
        .iter()
        .zip(spent)
        .filter(move |(_, d)| refused && d.allowed)
        .map(|(limit, _)| limit)
}

/// Checks a key against the rules in the module docs.
pub fn check_key(key: &str) -> CountersResult<()> {
    if key.is_empty() {
        return Err(CountersError::InvalidKey("empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(CountersError::InvalidKey("longer than 200 bytes"));
    }
    let bytes = key.as_bytes();
    if bytes
        .windows(2)
        .any(|w| w[0] == b'+' && w[1].is_ascii_digit())
    {
        return Err(CountersError::InvalidKey(
            "looks like a phone number; use its blind index",
        ));
    }
    Ok(())
}

/// Checks a value for [`Counters::put_if_absent`]: at most [`MAX_VALUE_LEN`] bytes
/// and, like a key, nothing that looks like a phone number.
pub fn check_value(value: &str) -> CountersResult<()> {
    if value.len() > MAX_VALUE_LEN {
        return Err(CountersError::InvalidArgument(
            "value longer than 200 bytes",
        ));
    }
    let bytes = value.as_bytes();
    if bytes
        .windows(2)
        .any(|w| w[0] == b'+' && w[1].is_ascii_digit())
    {
        return Err(CountersError::InvalidArgument(
            "value looks like a phone number",
        ));
    }
    Ok(())
}

pub(crate) fn check_ttl(ttl_ms: i64) -> CountersResult<i64> {
    if ttl_ms <= 0 {
        return Err(CountersError::InvalidArgument("ttl must be positive"));
    }
    Ok(ttl_ms.min(MAX_PERIOD_MS))
}

/// What [`Counters::put_if_absent`] found or stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The value the key holds after the call: the caller's if `created`, otherwise
    /// the one stored earlier.
    pub value: String,
    /// Whether this call stored it (the key held no live value).
    pub created: bool,
    /// Caller time (ms) from which the held value reads as absent.
    pub expires_at: Millis,
}

pub(crate) fn check_window(window_ms: i64) -> CountersResult<i64> {
    if window_ms <= 0 {
        return Err(CountersError::InvalidArgument("window must be positive"));
    }
    Ok(window_ms.min(MAX_PERIOD_MS))
}

/// Rate-limit and velocity state. See the module docs for what every backend
/// guarantees.
#[async_trait]
pub trait Counters: Send + Sync + 'static {
    /// Spends one request of `rate` on `key` if the rate admits it, atomically.
    async fn gcra(&self, key: &str, rate: Rate, now: Millis) -> CountersResult<GcraDecision> {
        self.gcra_cost(key, rate, 1, now).await
    }

    /// Whether one request of `rate` on `key` would be admitted now, spending nothing:
    /// the decision [`Counters::gcra`] would give, with the key left as it was.
    async fn gcra_peek(&self, key: &str, rate: Rate, now: Millis) -> CountersResult<GcraDecision>;

    /// Gives back `cost` requests spent earlier with the same rate (a check whose code
    /// turned out right, when only wrong ones should count): the TAT moves back by
    /// `cost` intervals, never before `now`, so a refund cannot build up credit.
    async fn gcra_refund(
        &self,
        key: &str,
        rate: Rate,
        cost: u32,
        now: Millis,
    ) -> CountersResult<()>;

    /// Spends one request on every `(key, rate)` if each of them admits it; otherwise
    /// spends nothing. The decisions come in order; when one refuses, the others say
    /// whether they would have admitted. Keys must be distinct. On Redis this is one
    /// script and atomic; here the default spends each key, then gives back what was
    /// spent if any refused (a concurrent caller may see a key one lower meanwhile).
    async fn gcra_all(
        &self,
        limits: &[(&str, Rate)],
        now: Millis,
    ) -> CountersResult<Vec<GcraDecision>> {
        let spent: Vec<GcraDecision> =
            join_all(limits.iter().map(|(key, rate)| self.gcra(key, *rate, now)))
                .await
                .into_iter()
                .collect::<Result<_, _>>()?;
        let refunds =
            to_give_back(limits, &spent).map(|(key, rate)| self.gcra_refund(key, *rate, 1, now));
        join_all(refunds)
            .await
            .into_iter()
            .collect::<Result<Vec<()>, _>>()?;
        Ok(spent)
    }

    /// Spends `cost` requests at once (e.g. the parts of a long SMS) if the rate admits
    /// them all; otherwise spends nothing. A cost above `rate.limit` is never admitted.
    async fn gcra_cost(
        &self,
        key: &str,
        rate: Rate,
        cost: u32,
        now: Millis,
    ) -> CountersResult<GcraDecision>;

    /// Adds `by` to the fixed window of `window_ms` that contains `now` and returns the
    /// new count. The window's state is kept until one window after the window ends
    /// (the sliding estimate reads the previous window), then expires.
    async fn incr_window(
        &self,
        key: &str,
        window_ms: i64,
        by: u64,
        now: Millis,
    ) -> CountersResult<u64>;

    /// The count of the fixed window of `window_ms` that contains `now` (0 if none).
    async fn get_window(&self, key: &str, window_ms: i64, now: Millis) -> CountersResult<u64>;

    /// Sliding-window estimate over the last `window_ms`: the current fixed window's
    /// count plus the previous window's, weighted by how much of it still lies inside
    /// the sliding window. Rounded up, so a limit checked against it errs on the side
    /// of refusing.
    async fn get_sliding(&self, key: &str, window_ms: i64, now: Millis) -> CountersResult<u64> {
        Ok(self.get_slidings(&[(key, window_ms)], now).await?[0])
    }

    /// The counts of several windows, each `(key, window_ms, at)`: the fixed window of
    /// `window_ms` that contains `at`. All at once: one round trip on a networked
    /// backend (one `MGET` on Redis).
    async fn get_windows(&self, reads: &[(&str, i64, Millis)]) -> CountersResult<Vec<u64>> {
        join_all(
            reads
                .iter()
                .map(|(key, w, at)| self.get_window(key, *w, *at)),
        )
        .await
        .into_iter()
        .collect()
    }

    /// [`Counters::get_sliding`] of several `(key, window_ms)` at once, in one
    /// [`Counters::get_windows`].
    async fn get_slidings(&self, reads: &[(&str, i64)], now: Millis) -> CountersResult<Vec<u64>> {
        Ok(self.get_windows_and_slidings(&[], reads, now).await?.1)
    }

    /// [`Counters::get_windows`] of `windows` and [`Counters::get_slidings`] of
    /// `slidings`, all in one [`Counters::get_windows`] (one `MGET` on Redis).
    async fn get_windows_and_slidings(
        &self,
        windows: &[(&str, i64, Millis)],
        slidings: &[(&str, i64)],
        now: Millis,
    ) -> CountersResult<(Vec<u64>, Vec<u64>)> {
        let mut reads = Vec::with_capacity(windows.len() + slidings.len() * 2);
        reads.extend_from_slice(windows);
        for (key, window_ms) in slidings {
            let w = check_window(*window_ms)?;
            reads.push((*key, w, now));
            reads.push((*key, w, now - w));
        }
        let mut counts = self.get_windows(&reads).await?;
        let pairs = counts.split_off(windows.len());
        let estimates = reads[windows.len()..]
            .chunks(2)
            .zip(pairs.chunks(2))
            .map(|(w, c)| sliding_estimate(c[0], c[1], w[0].1, now))
            .collect();
        Ok((counts, estimates))
    }

    /// [`Counters::incr_window`] of several `(key, window_ms, by)` at once (one
    /// transaction on Redis); the new counts, in order.
    async fn incr_windows(
        &self,
        incrs: &[(&str, i64, u64)],
        now: Millis,
    ) -> CountersResult<Vec<u64>> {
        join_all(
            incrs
                .iter()
                .map(|(key, w, by)| self.incr_window(key, *w, *by, now)),
        )
        .await
        .into_iter()
        .collect()
    }

    /// Stores `value` under `key` until `now + ttl_ms` unless the key already holds a
    /// value that is live at `now`; atomic, so of several concurrent callers (also on
    /// several instances) exactly one sees `created`. Values obey the rules for keys
    /// ([`check_value`]). Value keys are a namespace of their own: the same key in
    /// [`Counters::incr_window`] or [`Counters::gcra`] is another piece of state.
    async fn put_if_absent(
        &self,
        key: &str,
        value: &str,
        ttl_ms: i64,
        now: Millis,
    ) -> CountersResult<Stored>;

    /// The value under `key` if it is live at `now`.
    async fn get_value(&self, key: &str, now: Millis) -> CountersResult<Option<String>>;

    /// Whether the backend answers; for `/readyz`.
    async fn ping(&self) -> CountersResult<()>;

    /// `"memory"` or `"redis"`, for logs and metrics.
    fn backend(&self) -> &'static str;

    /// Whether a reading is a round trip to a server, rather than a look-up in this
    /// process. Concurrent callers that need the same reading share it only then (see
    /// `PumpingDetector::assess`): waiting for another caller's reading costs a
    /// wake-up, more than a local look-up.
    fn remote(&self) -> bool {
        false
    }
}

/// Which backend to use, parsed from configuration: `memory` (the default: one
/// instance) or a `redis://` / `rediss://` URL (several instances).
#[derive(Clone, PartialEq, Eq, Default)]
pub enum CountersSpec {
    #[default]
    Memory,
    Redis(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("counters: {0}")]
pub struct CountersSpecError(String);

impl std::str::FromStr for CountersSpec {
    type Err = CountersSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("memory") {
            return Ok(Self::Memory);
        }
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("redis://") || lower.starts_with("rediss://") {
            // Parsing only; nothing connects here.
            ::redis::Client::open(s).map_err(|e| {
                CountersSpecError(format!(
                    "{} is not a valid Redis URL ({:?}); expected redis://[:password@]host[:port][/db]",
                    redact(s),
                    e.kind()
                ))
            })?;
            return Ok(Self::Redis(s.to_owned()));
        }
        Err(CountersSpecError(format!(
            "unknown backend {:?}; expected `memory` or a redis:// or rediss:// URL",
            redact(s)
        )))
    }
}

impl CountersSpec {
    /// Builds the backend. The Redis backend connects lazily: the service may start
    /// while Redis is down (every operation then fails closed, and [`Counters::ping`]
    /// says so on `/readyz`), and it reconnects by itself.
    pub async fn build(&self) -> CountersResult<Arc<dyn Counters>> {
        match self {
            Self::Memory => Ok(Arc::new(MemoryCounters::default())),
            Self::Redis(url) => Ok(Arc::new(RedisCounters::connect(url).await?)),
        }
    }
}

/// Shows the spec with any password in a Redis URL hidden.
impl std::fmt::Display for CountersSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            Self::Redis(url) => f.write_str(&redact(url)),
        }
    }
}

impl std::fmt::Debug for CountersSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CountersSpec({self})")
    }
}

/// Replaces the userinfo of a URL (`user:password@`) with `***@`.
pub(crate) fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***@{}", &url[..scheme_end + 3], &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_764_072_000_000;

    /// Runs `n` requests at `now`, threading the TAT, and returns the decisions.
    fn run(tat: &mut Option<i64>, rate: Rate, now: Millis, n: usize) -> Vec<GcraDecision> {
        (0..n)
            .map(|_| {
                let (d, new_tat) = gcra_step(*tat, rate, now, 1);
                if let Some(t) = new_tat {
                    *tat = Some(t);
                }
                d
            })
            .collect()
    }

    #[test]
    fn admits_the_burst_then_refuses_with_the_interval_as_retry_after() {
        let rate = Rate::per_minute(5); // one every 12 s
        let mut tat = None;
        let burst = run(&mut tat, rate, NOW, 5);
        assert!(burst.iter().all(|d| d.allowed));
        let remaining: Vec<u32> = burst.iter().map(|d| d.remaining).collect();
        assert_eq!(remaining, [4, 3, 2, 1, 0]);
        assert_eq!(burst[0].reset_after_ms, 12_000);
        assert_eq!(burst[4].reset_after_ms, 60_000);

        let refused = run(&mut tat, rate, NOW, 1)[0];
        assert_eq!(
            refused,
            GcraDecision {
                allowed: false,
                limit: 5,
                remaining: 0,
                retry_after_ms: Some(12_000),
                reset_after_ms: 60_000,
            }
        );
    }

    #[test]
    fn recovers_one_request_per_interval() {
        let rate = Rate::per_minute(5);
        let mut tat = None;
        run(&mut tat, rate, NOW, 5);
        // 1 ms early: still refused, 1 ms to wait.
        let early = run(&mut tat, rate, NOW + 11_999, 1)[0];
        assert_eq!(early.retry_after_ms, Some(1));
        // On time: exactly one more.
        let later = run(&mut tat, rate, NOW + 12_000, 2);
        assert!(later[0].allowed);
        assert_eq!(later[0].remaining, 0);
        assert!(!later[1].allowed);
        // After a full period the whole burst is back.
        let full = run(&mut tat, rate, NOW + 12_000 + 60_000, 6);
        assert_eq!(full.iter().filter(|d| d.allowed).count(), 5);
    }

    #[test]
    fn refusal_does_not_consume() {
        let rate = Rate::per_second(2);
        let (_, tat) = gcra_step(None, rate, NOW, 1);
        let (_, tat) = gcra_step(tat, rate, NOW, 1);
        let stored = tat.unwrap();
        for _ in 0..100 {
            let (d, write) = gcra_step(Some(stored), rate, NOW + 100, 1);
            assert!(!d.allowed);
            assert_eq!(write, None);
            assert_eq!(d.retry_after_ms, Some(400));
        }
        // Hammering changed nothing: the next slot opens on schedule.
        let (d, _) = gcra_step(Some(stored), rate, NOW + 500, 1);
        assert!(d.allowed);
    }

    #[test]
    fn rates_that_do_not_divide_evenly_never_exceed_the_limit() {
        // 3 per second: T = 333.334 ms, rounded up in µs.
        let rate = Rate::per_second(3);
        assert_eq!(rate.interval_us(), 333_334);
        let mut tat = None;
        let mut admitted = 0;
        for ms in 0..10_000 {
            admitted += run(&mut tat, rate, NOW + ms, 1)
                .iter()
                .filter(|d| d.allowed)
                .count();
        }
        // A burst of 3, then 3 per second for the remaining 9.999 s.
        assert!(admitted <= 3 + 30, "{admitted}");
        assert!(admitted >= 3 + 29, "{admitted}");
    }

    #[test]
    fn a_zero_limit_refuses_and_cost_above_burst_is_never_admitted() {
        let (d, w) = gcra_step(None, Rate::per_minute(0), NOW, 1);
        assert!(!d.allowed);
        assert_eq!(w, None);
        assert_eq!(d.retry_after_ms, Some(60_000));

        let (d, w) = gcra_step(None, Rate::per_minute(5), NOW, 6);
        assert!(!d.allowed);
        assert_eq!(w, None);
        assert_eq!(d.remaining, 5);
    }

    #[test]
    fn cost_spends_several_cells() {
        let rate = Rate::per_minute(10);
        let (d, tat) = gcra_step(None, rate, NOW, 4);
        assert!(d.allowed);
        assert_eq!(d.remaining, 6);
        let (d, _) = gcra_step(tat, rate, NOW, 7);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 6);
        assert_eq!(d.retry_after_ms, Some(6_000));
    }

    #[test]
    fn a_stale_tat_counts_as_a_fresh_key() {
        let rate = Rate::per_second(1);
        let (a, _) = gcra_step(Some(0), rate, NOW, 1);
        let (b, _) = gcra_step(None, rate, NOW, 1);
        assert_eq!(a, b);
    }

    #[test]
    fn windows_are_aligned_to_the_epoch() {
        assert_eq!(window_of(60_000, 120_000), (2, 60_000));
        assert_eq!(window_of(60_000, 179_999), (2, 1));
        assert_eq!(window_of(60_000, -1), (-1, 1));
    }

    #[test]
    fn keys_that_look_like_phone_numbers_are_refused() {
        assert!(check_key("n:3f9a0c").is_ok());
        assert!(check_key("cc:44").is_ok());
        assert!(matches!(
            check_key("n:+447700900123"),
            Err(CountersError::InvalidKey(_))
        ));
        assert!(check_key("").is_err());
        assert!(check_key(&"a".repeat(MAX_KEY_LEN + 1)).is_err());
        let msg = check_key("+447700900123").unwrap_err().to_string();
        assert!(!msg.contains("7700"), "{msg}");
    }

    #[test]
    fn parses_specs() {
        assert_eq!("memory".parse(), Ok(CountersSpec::Memory));
        assert_eq!(" MEMORY ".parse(), Ok(CountersSpec::Memory));
        assert_eq!("".parse(), Ok(CountersSpec::Memory));
        assert_eq!(CountersSpec::default(), CountersSpec::Memory);
        assert_eq!(
            "redis://127.0.0.1:6379".parse(),
            Ok(CountersSpec::Redis("redis://127.0.0.1:6379".into()))
        );
        assert_eq!(
            "rediss://cache.internal:6380/2".parse(),
            Ok(CountersSpec::Redis("rediss://cache.internal:6380/2".into()))
        );
        let err = "memcached://x".parse::<CountersSpec>().unwrap_err();
        assert!(err.to_string().contains("expected `memory`"), "{err}");
        assert!("redis://".parse::<CountersSpec>().is_err());
    }

    #[test]
    fn spec_display_hides_the_password() {
        let spec: CountersSpec = "redis://:s3cret@127.0.0.1:6379/0".parse().unwrap();
        assert_eq!(spec.to_string(), "redis://***@127.0.0.1:6379/0");
        assert!(!format!("{spec:?}").contains("s3cret"));
        let err = "redis://u:s3cret@".parse::<CountersSpec>();
        if let Err(e) = err {
            assert!(!e.to_string().contains("s3cret"));
        }
        assert_eq!(CountersSpec::Memory.to_string(), "memory");
    }
}
