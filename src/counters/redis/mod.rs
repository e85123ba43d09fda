//! Counters in Redis: one state for many instances.
//!
//! * **Atomicity** comes from Redis running each Lua script, and each MULTI … EXEC, as
//!   one step. Concurrent callers share them (`batch.rs`): one task per kind takes
//!   every call waiting, sends them as one request and answers each caller with what
//!   it would have got alone, in turn. GCRA spends and refunds are one script over
//!   the batch's keys (`gcra.rs`; the several limits of one request all or nothing,
//!   each key read once and written once); window counts one transaction of INCRBY +
//!   PEXPIRE per distinct key (`windows.rs`; a script costs Redis ~10 µs a call, such
//!   a transaction ~2 µs). Scripts are sent with EVALSHA, and the crate falls back to
//!   EVAL (loading the script) when the server does not know it.
//! * **One node.** Batches span keys of different hash slots (`gcra_all`, `MGET`,
//!   multi-key transactions), and the connection is to one endpoint: Redis Cluster is
//!   not supported (see docs/deployment.md).
//! * **Time** is the caller's `now`, passed as an argument; the scripts never call
//!   `TIME`. Instances sharing a Redis must keep their clocks synchronised (NTP).
//!   TTLs are set relative to that `now` (how long until the state means nothing), so
//!   Redis's own clock does not matter.
//! * **Failure** is fast and explicit: every command is bounded by a timeout (250 ms by
//!   default, including waiting for a connection) and returns
//!   [`CountersError::Unavailable`], on which callers fail closed. The connection is a
//!   `ConnectionManager`: one multiplexed connection, re-established in the background
//!   after it drops. A command that times out after reaching Redis may still have been
//!   applied; failing closed makes that harmless.
//! * **Keys** are `rf:g:<key>` (a GCRA TAT in µs), `rf:w:<window_ms>:<index>:<key>`
//!   (a window count, kept one window past its end for the sliding estimate) and
//!   `rf:v:<key>` (a stored value: a hash of the value `v` and its expiry `exp` in
//!   caller time, so that it reads as absent from the caller's `now` on even when
//!   Redis's own clock has not yet expired it). With `maxmemory`, use
//!   `maxmemory-policy volatile-ttl`: every key here has a TTL, and that policy evicts
//!   the one closest to expiry first, as the memory backend does.

mod batch;
mod gcra;
mod windows;

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};

use self::batch::{Batch, Batcher, Failure};
use self::gcra::{Found, Gcra, Limit, Op};
use self::windows::{Incr, Windows};
use super::{
    check_key, check_ttl, check_value, check_window, gcra_step, redact, window_of, Counters,
    CountersError, CountersResult, GcraDecision, Rate, Stored,
};
use crate::clock::Millis;

/// The bound on one command, connecting included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);

/// Set-if-absent with an expiry in caller time, in one step. Comparing the stored
/// expiry with the caller's `now` (rather than relying on the TTL alone) makes the
/// answer follow the caller's clock, as the memory backend does; the TTL only
/// collects the garbage.
const PUT_IF_ABSENT_LUA: &str = r#"
-- KEYS[1]: a hash {v = value, exp = caller-time expiry in ms}
-- ARGV[1]: value  ARGV[2]: now (ms)  ARGV[3]: ttl (ms)
local held = redis.call('HMGET', KEYS[1], 'v', 'exp')
if held[1] and held[2] and tonumber(held[2]) > tonumber(ARGV[2]) then
  return {0, held[1], held[2]}
end
local exp = string.format('%.0f', tonumber(ARGV[2]) + tonumber(ARGV[3]))
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'exp', exp)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, ARGV[1], exp}
"#;

/// The Redis key of `key`'s window of `window_ms` that contains `at`, and how long it
/// is kept from `at` (to the window's end plus one window: the sliding estimate reads it
/// then).
fn window_key(key: &str, window_ms: i64, at: Millis) -> CountersResult<(String, i64)> {
    check_key(key)?;
    let window_ms = check_window(window_ms)?;
    let (index, left) = window_of(window_ms, at);
    Ok((
        format!("rf:w:{window_ms}:{index}:{key}"),
        left.saturating_add(window_ms),
    ))
}

pub struct RedisCounters {
    conn: ConnectionManager,
    /// GCRA operations go through one task that runs concurrent ones as one script.
    gcra: Batcher<Gcra>,
    /// Window counts go through one task that merges concurrent ones.
    windows: Batcher<Windows>,
    timeout: Duration,
    put_if_absent: Script,
    /// The URL with any password hidden, for error messages.
    target: String,
}

impl std::fmt::Debug for RedisCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCounters")
            .field("target", &self.target)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisCounters {
    /// Prepares a connection to `url` (`redis://` or `rediss://`) with the default
    /// timeout. Nothing is sent yet: the first command connects, so a Redis that is
    /// down at start-up makes commands fail closed instead of stopping the service.
    /// Needs a Tokio runtime.
    pub async fn connect(url: &str) -> CountersResult<Self> {
        Self::connect_with_timeout(url, DEFAULT_TIMEOUT).await
    }

    pub async fn connect_with_timeout(url: &str, timeout: Duration) -> CountersResult<Self> {
        let target = redact(url);
        let client = redis::Client::open(url).map_err(|e| {
            CountersError::Unavailable(format!("invalid Redis URL {target}: {:?}", e.kind()))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(timeout);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| CountersError::Unavailable(format!("redis {target}: {e}")))?;
        let gcra = Batcher::spawn(
            Gcra::new(),
            conn.clone(),
            timeout,
            describe(&target, "gcra", timeout),
        );
        let windows = Batcher::spawn(
            Windows,
            conn.clone(),
            timeout,
            describe(&target, "incr_windows", timeout),
        );
        Ok(Self {
            conn,
            gcra,
            windows,
            timeout,
            put_if_absent: Script::new(PUT_IF_ABSENT_LUA),
            target,
        })
    }

    /// Spends `cost` on each of `limits`, all or nothing, in the next GCRA batch;
    /// `dry`, spends nothing and decides as if it did.
    async fn gcra_spend(
        &self,
        limits: &[(&str, Rate)],
        cost: u32,
        now: Millis,
        dry: bool,
    ) -> CountersResult<Vec<GcraDecision>> {
        let limits_us = limits
            .iter()
            .map(|(key, rate)| {
                check_key(key)?;
                Ok(Limit {
                    key: format!("rf:g:{key}"),
                    step: rate.interval_us().saturating_mul(i64::from(cost)),
                    burst: rate.burst_us(),
                })
            })
            .collect::<CountersResult<Vec<Limit>>>()?;
        let op = Op::Spend {
            now_us: now.saturating_mul(1000),
            limits: limits_us,
            dry,
        };
        let Found { admitted, tats } = self.batched("gcra", &self.gcra, op).await?;
        let decisions: Vec<GcraDecision> = limits
            .iter()
            .zip(tats)
            .map(|((_, rate), tat)| gcra_step(tat, *rate, now, cost).0)
            .collect();
        if decisions.iter().all(|d| d.allowed) != admitted {
            return Err(CountersError::Backend(
                "redis gcra: script and gcra_step disagree".into(),
            ));
        }
        Ok(decisions)
    }

    /// Runs `call` in `batcher`'s next batch, under the timeout.
    async fn batched<B: Batch>(
        &self,
        what: &'static str,
        batcher: &Batcher<B>,
        call: B::Call,
    ) -> CountersResult<B::Answer> {
        match tokio::time::timeout(self.timeout, batcher.call(call)).await {
            Ok(answer) => answer,
            Err(_) => Err(no_answer(&self.target, what, self.timeout)),
        }
    }

    /// Runs one command under the timeout, mapping failures to typed errors. Messages
    /// name the operation and the server, never the key.
    async fn run<T>(
        &self,
        what: &'static str,
        f: impl Future<Output = Result<T, RedisError>>,
    ) -> CountersResult<T> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify(&self.target, what, &e)),
            Err(_) => Err(no_answer(&self.target, what, self.timeout)),
        }
    }
}

/// A failed command as an error naming the operation and the server, never the key.
fn classify(target: &str, what: &str, e: &RedisError) -> CountersError {
    use redis::ErrorKind;
    let msg = format!("redis {target} {what}: {e}");
    match e.kind() {
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => CountersError::Backend(msg),
        _ => CountersError::Unavailable(msg),
    }
}

/// How a batcher's failure reads to each of its callers.
fn describe(
    target: &str,
    what: &'static str,
    timeout: Duration,
) -> impl Fn(Failure) -> CountersError + Send + 'static {
    let target = target.to_owned();
    move |failure| match failure {
        Failure::Redis(e) => classify(&target, what, &e),
        Failure::Timeout => no_answer(&target, what, timeout),
        Failure::WrongCount => CountersError::Backend(format!(
            "redis {what}: Redis answered the wrong number of items"
        )),
    }
}

fn no_answer(target: &str, what: &str, timeout: Duration) -> CountersError {
    CountersError::Unavailable(format!(
        "redis {target} {what}: no answer within {} ms",
        timeout.as_millis()
    ))
}

#[async_trait]
impl Counters for RedisCounters {
    async fn gcra_cost(
        &self,
        key: &str,
        rate: Rate,
        cost: u32,
        now: Millis,
    ) -> CountersResult<GcraDecision> {
        Ok(self
            .gcra_spend(&[(key, rate)], cost, now, false)
            .await?
            .remove(0))
    }

    async fn gcra_all(
        &self,
        limits: &[(&str, Rate)],
        now: Millis,
    ) -> CountersResult<Vec<GcraDecision>> {
        if limits.is_empty() {
            return Ok(Vec::new());
        }
        self.gcra_spend(limits, 1, now, false).await
    }

    async fn gcra_peek(&self, key: &str, rate: Rate, now: Millis) -> CountersResult<GcraDecision> {
        Ok(self
            .gcra_spend(&[(key, rate)], 1, now, true)
            .await?
            .remove(0))
    }

    async fn gcra_refund(
        &self,
        key: &str,
        rate: Rate,
        cost: u32,
        now: Millis,
    ) -> CountersResult<()> {
        check_key(key)?;
        let op = Op::Refund {
            now_us: now.saturating_mul(1000),
            key: format!("rf:g:{key}"),
            step: rate.interval_us().saturating_mul(i64::from(cost)),
        };
        self.batched("gcra refund", &self.gcra, op).await?;
        Ok(())
    }

    async fn incr_window(
        &self,
        key: &str,
        window_ms: i64,
        by: u64,
        now: Millis,
    ) -> CountersResult<u64> {
        Ok(self.incr_windows(&[(key, window_ms, by)], now).await?[0])
    }

    async fn get_window(&self, key: &str, window_ms: i64, now: Millis) -> CountersResult<u64> {
        Ok(self.get_windows(&[(key, window_ms, now)]).await?[0])
    }

    async fn get_windows(&self, reads: &[(&str, i64, Millis)]) -> CountersResult<Vec<u64>> {
        if reads.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for (key, window_ms, at) in reads {
            cmd.arg(window_key(key, *window_ms, *at)?.0);
        }
        let mut conn = self.conn.clone();
        let counts: Vec<Option<i64>> = self.run("get_windows", cmd.query_async(&mut conn)).await?;
        if counts.len() != reads.len() {
            return Err(CountersError::Backend(
                "redis get_windows: MGET answered the wrong number of keys".into(),
            ));
        }
        Ok(counts
            .into_iter()
            .map(|n| n.unwrap_or(0).max(0) as u64)
            .collect())
    }

    async fn incr_windows(
        &self,
        incrs: &[(&str, i64, u64)],
        now: Millis,
    ) -> CountersResult<Vec<u64>> {
        if incrs.is_empty() {
            return Ok(Vec::new());
        }
        let incrs = incrs
            .iter()
            .map(|(key, window_ms, by)| {
                let (key, keep_ms) = window_key(key, *window_ms, now)?;
                Ok(Incr {
                    key,
                    keep_ms,
                    by: *by,
                })
            })
            .collect::<CountersResult<Vec<Incr>>>()?;
        self.batched("incr_windows", &self.windows, incrs).await
    }

    async fn put_if_absent(
        &self,
        key: &str,
        value: &str,
        ttl_ms: i64,
        now: Millis,
    ) -> CountersResult<Stored> {
        check_key(key)?;
        check_value(value)?;
        let ttl_ms = check_ttl(ttl_ms)?;
        let mut conn = self.conn.clone();
        let mut call = self.put_if_absent.key(format!("rf:v:{key}"));
        call.arg(value).arg(now).arg(ttl_ms);
        let (created, value, expires_at): (i64, String, String) = self
            .run("put_if_absent", call.invoke_async(&mut conn))
            .await?;
        let expires_at = expires_at.parse::<Millis>().map_err(|_| {
            CountersError::Backend("redis put_if_absent: stored expiry is not an integer".into())
        })?;
        Ok(Stored {
            value,
            created: created == 1,
            expires_at,
        })
    }

    async fn get_value(&self, key: &str, now: Millis) -> CountersResult<Option<String>> {
        check_key(key)?;
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(format!("rf:v:{key}")).arg("v").arg("exp");
        let (value, expires_at): (Option<String>, Option<String>) =
            self.run("get_value", cmd.query_async(&mut conn)).await?;
        let (Some(value), Some(expires_at)) = (value, expires_at) else {
            return Ok(None);
        };
        let expires_at = expires_at.parse::<Millis>().map_err(|_| {
            CountersError::Backend("redis get_value: stored expiry is not an integer".into())
        })?;
        Ok((expires_at > now).then_some(value))
    }

    async fn ping(&self) -> CountersResult<()> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        let pong: String = self.run("ping", cmd.query_async(&mut conn)).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(CountersError::Backend(format!(
                "redis {} ping: unexpected answer",
                self.target
            )))
        }
    }

    fn backend(&self) -> &'static str {
        "redis"
    }

    fn remote(&self) -> bool {
        true
    }
}
