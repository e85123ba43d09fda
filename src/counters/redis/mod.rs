//! Counters in Redis: one state for many instances.
//!
//! * **Atomicity** comes from Redis running each Lua script, and each MULTI … EXEC, as
//!   one step: the GCRA read-decide-write is a script (the several limits of one
//!   request one script over their keys, all or nothing), window counts a transaction
//!   of INCRBY + PEXPIRE per key (a script costs Redis ~10 µs a call, such a
//!   transaction ~2 µs). Concurrent window counts share one transaction
//!   (`windows.rs`): each caller gets the counts it would have seen alone, in turn.
//!   Scripts are sent with EVALSHA, and the crate falls back to EVAL (loading the
//!   script) when the server does not know it.
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

mod windows;

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};

use self::windows::{Failure, Incr, WindowBatcher};
use super::{
    check_key, check_ttl, check_value, check_window, gcra_step, redact, window_of, Counters,
    CountersError, CountersResult, GcraDecision, Rate, Stored,
};
use crate::clock::Millis;

/// The bound on one command, connecting included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);

/// The GCRA rule of [`gcra_step`], applied atomically to one or several keys, all or
/// nothing: every key's TAT is read and decided; only if every one admits are they all
/// written. Rust computes the intervals (times the cost) and bursts; the script only
/// adds and compares integers (exact in Lua's doubles below 2^53, i.e. TATs in µs until
/// the year 2255). A key's state means nothing once its TAT has passed: Redis forgets
/// it then. Returns `{admitted (1 or 0), {the TAT found per key, '' if none}}`.
const GCRA_LUA: &str = r#"
-- KEYS: the keys' TATs (µs)  ARGV[1]: now (µs)
-- ARGV[2i], ARGV[2i+1]: key i's interval * cost (µs) and burst (µs)
local now = tonumber(ARGV[1])
local found = {}
local new_tats = {}
local admitted = 1
for i = 1, #KEYS do
  local stored = redis.call('GET', KEYS[i])
  local tat = now
  if stored then
    local seen = tonumber(stored)
    if seen > tat then tat = seen end
  else
    stored = ''
  end
  found[i] = stored
  new_tats[i] = tat + tonumber(ARGV[2 * i])
  if new_tats[i] - tonumber(ARGV[2 * i + 1]) > now then admitted = 0 end
end
if admitted == 1 then
  for i = 1, #KEYS do
    local ttl_ms = math.floor((new_tats[i] - now) / 1000) + 1
    redis.call('SET', KEYS[i], string.format('%.0f', new_tats[i]), 'PX', string.format('%.0f', ttl_ms))
  end
end
return {admitted, found}
"#;

const GCRA_REFUND_LUA: &str = r#"
-- KEYS[1]: the key's TAT (µs)  ARGV[1]: now (µs)  ARGV[2]: interval * cost (µs)
local stored = redis.call('GET', KEYS[1])
if not stored then return 0 end
local now = tonumber(ARGV[1])
local tat = tonumber(stored) - tonumber(ARGV[2])
if tat <= now then
  redis.call('DEL', KEYS[1])
  return 1
end
local ttl_ms = math.floor((tat - now) / 1000) + 1
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', string.format('%.0f', ttl_ms))
return 1
"#;

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

/// A TAT as a GCRA script found it: '' when the key held none.
fn stored_tat(stored: &str) -> CountersResult<Option<i64>> {
    match stored {
        "" => Ok(None),
        s => s
            .parse::<i64>()
            .map(Some)
            .map_err(|_| CountersError::Backend("redis gcra: stored TAT is not an integer".into())),
    }
}

pub struct RedisCounters {
    conn: ConnectionManager,
    /// Window counts go through one task that merges concurrent ones.
    windows: WindowBatcher,
    timeout: Duration,
    gcra: Script,
    gcra_refund: Script,
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
        let windows = {
            let target = target.clone();
            WindowBatcher::spawn(conn.clone(), timeout, move |failure| match failure {
                Failure::Redis(e) => classify(&target, "incr_windows", &e),
                Failure::Timeout => no_answer(&target, "incr_windows", timeout),
                Failure::WrongCount => CountersError::Backend(
                    "redis incr_windows: the transaction answered the wrong number of counts"
                        .into(),
                ),
            })
        };
        Ok(Self {
            conn,
            windows,
            timeout,
            gcra: Script::new(GCRA_LUA),
            gcra_refund: Script::new(GCRA_REFUND_LUA),
            put_if_absent: Script::new(PUT_IF_ABSENT_LUA),
            target,
        })
    }

    /// [`GCRA_LUA`] on `limits`, spending `cost` on each, all or nothing.
    async fn gcra_script(
        &self,
        limits: &[(&str, Rate)],
        cost: u32,
        now: Millis,
    ) -> CountersResult<Vec<GcraDecision>> {
        let mut call = self.gcra.prepare_invoke();
        call.arg(now.saturating_mul(1000));
        for (key, rate) in limits {
            check_key(key)?;
            call.key(format!("rf:g:{key}"));
            call.arg(rate.interval_us().saturating_mul(i64::from(cost)))
                .arg(rate.burst_us());
        }
        let mut conn = self.conn.clone();
        let (admitted, found): (i64, Vec<String>) =
            self.run("gcra", call.invoke_async(&mut conn)).await?;
        if found.len() != limits.len() {
            return Err(CountersError::Backend(
                "redis gcra: the script answered the wrong number of keys".into(),
            ));
        }
        let decisions = limits
            .iter()
            .zip(&found)
            .map(|((_, rate), stored)| Ok(gcra_step(stored_tat(stored)?, *rate, now, cost).0))
            .collect::<CountersResult<Vec<GcraDecision>>>()?;
        if decisions.iter().all(|d| d.allowed) != (admitted == 1) {
            return Err(CountersError::Backend(
                "redis gcra: script and gcra_step disagree".into(),
            ));
        }
        Ok(decisions)
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
        Ok(self.gcra_script(&[(key, rate)], cost, now).await?.remove(0))
    }

    async fn gcra_all(
        &self,
        limits: &[(&str, Rate)],
        now: Millis,
    ) -> CountersResult<Vec<GcraDecision>> {
        if limits.is_empty() {
            return Ok(Vec::new());
        }
        self.gcra_script(limits, 1, now).await
    }

    async fn gcra_refund(
        &self,
        key: &str,
        rate: Rate,
        cost: u32,
        now: Millis,
    ) -> CountersResult<()> {
        check_key(key)?;
        let mut conn = self.conn.clone();
        let mut call = self.gcra_refund.key(format!("rf:g:{key}"));
        call.arg(now.saturating_mul(1000))
            .arg(rate.interval_us().saturating_mul(i64::from(cost)));
        let _: i64 = self
            .run("gcra refund", call.invoke_async(&mut conn))
            .await?;
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
        match tokio::time::timeout(self.timeout, self.windows.incr(incrs)).await {
            Ok(counts) => counts,
            Err(_) => Err(no_answer(&self.target, "incr_windows", self.timeout)),
        }
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
