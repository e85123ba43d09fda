//! GCRA spends and refunds of concurrent callers, in one script.
//!
//! A start spends several limits at once and a check reserves a guess and often gives
//! it back, and the limits of a service or a country are the same few keys for every
//! caller: one script call each would read and write those keys once per request.
//! [`Gcra`] runs a whole batch (see
//! [`super::batch`]) as one call of [`GCRA_LUA`]: every distinct key is read once,
//! the operations are applied in order to what the earlier ones left, and each key
//! written is written once, at the end. A caller gets the TATs its operation found,
//! exactly as if it had run alone at its place in the order.

use std::collections::HashMap;

use redis::aio::ConnectionManager;
use redis::Script;

use super::batch::{Batch, Failure};

/// The GCRA rule of [`gcra_step`](super::super::gcra_step) applied to a batch of
/// operations, in order, as one atomic step. A spend reads each of its keys' TATs
/// (`tat = max(stored, now)`, `new_tat = tat + step`, admitted iff `new_tat - burst <=
/// now` for every key) and writes them only if every key admits (a dry spend decides
/// the same way and writes nothing); a refund moves its key's TAT back by `step`,
/// forgetting it once that reaches `now`. Rust computes the steps (interval times cost)
/// and bursts; the script only adds and compares integers (exact in Lua's doubles below
/// 2^53, i.e. TATs in µs until the year 2255). Returns one flat list: per spend (dry or
/// not), `admitted` (1 or 0) and then the TAT it found per key (nil if none); per
/// refund, 1. (Flat, and with `tonumber` a local: a batch of eight starts cost Redis
/// 161–169 µs instead of 228–230 with a table per operation.) Keys are read with `MGET`
/// in slices, as Lua's `unpack` has a bounded stack. A batch of dry spends only does
/// not call it (see [`peek`]).
const GCRA_LUA: &str = r#"
-- KEYS: the batch's distinct keys, each holding a TAT (µs)
-- ARGV: the operations in order, each `kind now n` and then n triples `key step burst`
--   (key: an index into KEYS; µs): kind 1 spends `step` on each key if each admits;
--   kind 2 only says whether it would; kind 0 gives `step` back on its one key (burst
--   unused).
local tonumber = tonumber
local tats = {}
for i = 1, #KEYS, 1000 do
  local got = redis.call('MGET', unpack(KEYS, i, math.min(i + 999, #KEYS)))
  for j = 1, #got do
    tats[i + j - 1] = got[j] and tonumber(got[j])
  end
end
local written = {}
local out, o = {}, 0
local a, nargs = 1, #ARGV
while a <= nargs do
  local kind, now, n = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local first = a + 3
  a = first + 3 * n
  if kind ~= '0' then
    local admitted, at = 1, o + 1
    o = at
    for j = first, a - 1, 3 do
      local tat = tats[tonumber(ARGV[j])]
      o = o + 1
      out[o] = tat
      if not tat or tat < now then tat = now end
      if tat + tonumber(ARGV[j + 1]) - tonumber(ARGV[j + 2]) > now then admitted = 0 end
    end
    out[at] = admitted
    if admitted == 1 and kind == '1' then
      for j = first, a - 1, 3 do
        local k = tonumber(ARGV[j])
        local tat = tats[k]
        if not tat or tat < now then tat = now end
        tats[k] = tat + tonumber(ARGV[j + 1])
        written[k] = now
      end
    end
  else
    local k = tonumber(ARGV[first])
    local tat = tats[k]
    if tat then
      tat = tat - tonumber(ARGV[first + 1])
      if tat <= now then tats[k] = false else tats[k] = tat end
      written[k] = now
    end
    o = o + 1
    out[o] = 1
  end
end
for k, now in pairs(written) do
  local tat = tats[k]
  if tat then
    local ttl_ms = math.floor((tat - now) / 1000) + 1
    redis.call('SET', KEYS[k], string.format('%.0f', tat), 'PX', string.format('%.0f', ttl_ms))
  else
    redis.call('DEL', KEYS[k])
  end
end
return out
"#;

/// One key of a spend: the Redis key, the step (interval times cost) and the burst,
/// in µs.
pub(super) struct Limit {
    pub key: String,
    pub step: i64,
    pub burst: i64,
}

pub(super) enum Op {
    /// Spends on every limit if each admits, otherwise on none; `dry`, spends on none
    /// and only says whether it would have.
    Spend {
        now_us: i64,
        limits: Vec<Limit>,
        dry: bool,
    },
    /// Moves `key`'s TAT back by `step`, never before `now_us`; nothing if it holds
    /// none.
    Refund { now_us: i64, key: String, step: i64 },
}

/// What an operation found: whether it was admitted, and for a spend the TAT of each
/// of its keys before it (`None`: none). A refund is admitted and finds nothing.
pub(super) struct Found {
    pub admitted: bool,
    pub tats: Vec<Option<i64>>,
}

/// GCRA operations as a [`Batch`].
pub(super) struct Gcra {
    script: Script,
}

impl Gcra {
    pub fn new() -> Self {
        Self {
            script: Script::new(GCRA_LUA),
        }
    }
}

impl Batch for Gcra {
    type Call = Op;
    type Answer = Found;

    /// Keys named, summed over the batch's operations.
    const MAX_WEIGHT: usize = 1024;

    fn weight(op: &Op) -> usize {
        match op {
            Op::Spend { limits, .. } => limits.len(),
            Op::Refund { .. } => 1,
        }
    }

    async fn run(&self, conn: &mut ConnectionManager, ops: &[Op]) -> Result<Vec<Found>, Failure> {
        if ops
            .iter()
            .all(|op| matches!(op, Op::Spend { dry: true, .. }))
        {
            return peek(conn, ops).await;
        }
        let (keys, args) = encode(ops);
        let mut call = self.script.prepare_invoke();
        for key in keys {
            call.key(key);
        }
        call.arg(args);
        let flat: Vec<Option<i64>> = call.invoke_async(conn).await.map_err(Failure::Redis)?;
        let mut flat = flat.into_iter();
        let found = ops
            .iter()
            .map(|op| {
                let keys = match op {
                    Op::Spend { limits, .. } => limits.len(),
                    Op::Refund { .. } => 0,
                };
                let admitted = flat.next().ok_or(Failure::WrongCount)? == Some(1);
                let tats: Vec<Option<i64>> = flat.by_ref().take(keys).collect();
                if tats.len() != keys {
                    return Err(Failure::WrongCount);
                }
                Ok(Found { admitted, tats })
            })
            .collect::<Result<Vec<Found>, Failure>>()?;
        if flat.next().is_some() {
            return Err(Failure::WrongCount);
        }
        Ok(found)
    }
}

/// A batch of dry spends only (a batch of checks asking the guess budget of right
/// codes): nothing to write, so one `MGET` of their keys and the script's rule applied
/// here — a script call costs Redis about ten times the read.
async fn peek(conn: &mut ConnectionManager, ops: &[Op]) -> Result<Vec<Found>, Failure> {
    let (keys, _) = encode(ops);
    let mut read = redis::cmd("MGET");
    for key in &keys {
        read.arg(*key);
    }
    let tats: Vec<Option<i64>> = read.query_async(conn).await.map_err(Failure::Redis)?;
    if tats.len() != keys.len() {
        return Err(Failure::WrongCount);
    }
    let by_key: HashMap<&str, Option<i64>> = keys.into_iter().zip(tats).collect();
    Ok(ops
        .iter()
        .map(|op| {
            // Only dry spends reach here; a refund would read as an empty spend.
            let (now_us, limits): (&i64, &[Limit]) = match op {
                Op::Spend { now_us, limits, .. } => (now_us, limits),
                Op::Refund { now_us, .. } => (now_us, &[]),
            };
            let tats: Vec<Option<i64>> = limits.iter().map(|l| by_key[l.key.as_str()]).collect();
            // As the script: `tat = max(stored, now)`, admitted iff `tat + step - burst
            // <= now` for every key.
            let admitted = limits.iter().zip(&tats).all(|(l, tat)| {
                let tat = tat.map_or(*now_us, |t| t.max(*now_us));
                tat + l.step - l.burst <= *now_us
            });
            Found { admitted, tats }
        })
        .collect())
}

/// The script's `KEYS` (each distinct key once, in order of first use) and `ARGV` for
/// `ops`, as [`GCRA_LUA`] lays them out (key indices from 1, as in Lua).
fn encode<'a>(ops: &'a [Op]) -> (Vec<&'a str>, Vec<i64>) {
    let mut keys: Vec<&str> = Vec::new();
    let mut index: HashMap<&str, i64> = HashMap::new();
    let mut number = |key: &'a str| {
        *index.entry(key).or_insert_with(|| {
            keys.push(key);
            keys.len() as i64
        })
    };
    let mut args = Vec::new();
    for op in ops {
        match op {
            Op::Spend {
                now_us,
                limits,
                dry,
            } => {
                args.extend([if *dry { 2 } else { 1 }, *now_us, limits.len() as i64]);
                for limit in limits {
                    args.extend([number(&limit.key), limit.step, limit.burst]);
                }
            }
            Op::Refund { now_us, key, step } => {
                args.extend([0, *now_us, 1, number(key), *step, 0]);
            }
        }
    }
    (keys, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(key: &str, step: i64, burst: i64) -> Limit {
        Limit {
            key: key.into(),
            step,
            burst,
        }
    }

    #[test]
    fn a_batch_names_each_key_once_and_its_operations_in_order() {
        let ops = [
            Op::Spend {
                now_us: 7,
                limits: vec![limit("a", 10, 100), limit("svc", 1, 50)],
                dry: false,
            },
            Op::Refund {
                now_us: 8,
                key: "a".into(),
                step: 10,
            },
            Op::Spend {
                now_us: 9,
                limits: vec![limit("b", 20, 200), limit("svc", 1, 50)],
                dry: true,
            },
        ];
        let (keys, args) = encode(&ops);
        assert_eq!(keys, ["a", "svc", "b"]);
        #[rustfmt::skip]
        assert_eq!(args, [
            1, 7, 2,   1, 10, 100,   2, 1, 50,
            0, 8, 1,   1, 10, 0,
            2, 9, 2,   3, 20, 200,   2, 1, 50,
        ]);
        assert_eq!(ops.iter().map(Gcra::weight).sum::<usize>(), 5);
    }

    /// What an operation of the random batch below is.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Kind {
        Refund,
        Spend,
        Dry,
    }

    /// A random batch of spends, dry spends and refunds over a few keys, run as one
    /// script on the Redis of `RINGFENCE_TEST_REDIS_URL`, finds at each operation
    /// exactly what the in-memory backend finds running the same operations one by one;
    /// and so does a batch of dry spends only, which is read without the script.
    #[tokio::test]
    async fn a_batch_decides_as_its_operations_one_after_another() {
        use rand::{Rng, SeedableRng};

        use crate::counters::{gcra_step, Counters, MemoryCounters, Rate};

        let Some(url) = std::env::var("RINGFENCE_TEST_REDIS_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            eprintln!("RINGFENCE_TEST_REDIS_URL unset: Redis not tested");
            return;
        };
        let client = redis::Client::open(url.as_str()).expect("a Redis URL");
        let mut conn = ConnectionManager::new(client)
            .await
            .expect("RINGFENCE_TEST_REDIS_URL is set but Redis does not answer");
        let seed = rand::random::<u64>();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let names: Vec<String> = (0..4).map(|i| format!("test:{seed:016x}:{i}")).collect();
        let rates = [Rate::per_minute(3), Rate::per_hour(5), Rate::per_second(2)];
        let memory = MemoryCounters::default();
        let mut now: i64 = 1_700_000_000_000;
        // (operation, its rate per key and cost, as the memory backend takes them)
        let mut ops = Vec::new();
        let mut plain = Vec::new();
        for _ in 0..300 {
            now += rng.gen_range(0..400);
            let cost = rng.gen_range(1..=2u32);
            if rng.gen_bool(0.3) {
                let (key, rate) = (rng.gen_range(0..names.len()), rates[rng.gen_range(0..3)]);
                ops.push(Op::Refund {
                    now_us: now * 1000,
                    key: format!("rf:g:{}", names[key]),
                    step: rate.interval_us() * i64::from(cost),
                });
                plain.push((now, vec![(key, rate)], cost, Kind::Refund));
            } else {
                let mut picked: Vec<usize> = (0..names.len()).collect();
                picked.retain(|_| rng.gen_bool(0.5));
                if picked.is_empty() {
                    picked.push(0);
                }
                let cost = if picked.len() == 1 { cost } else { 1 };
                // A dry spend: one key, one request, as a check's peek.
                let dry = picked.len() == 1 && cost == 1 && rng.gen_bool(0.4);
                let limits: Vec<(usize, Rate)> =
                    picked.iter().map(|&k| (k, rates[k % 3])).collect();
                ops.push(Op::Spend {
                    now_us: now * 1000,
                    limits: limits
                        .iter()
                        .map(|&(k, rate)| Limit {
                            key: format!("rf:g:{}", names[k]),
                            step: rate.interval_us() * i64::from(cost),
                            burst: rate.burst_us(),
                        })
                        .collect(),
                    dry,
                });
                plain.push((now, limits, cost, if dry { Kind::Dry } else { Kind::Spend }));
            }
        }
        let found = Gcra::new().run(&mut conn, &ops).await;
        let found = found.unwrap_or_else(|_| panic!("the batch failed (seed {seed})"));
        for (i, ((now, limits, cost, kind), found)) in plain.iter().zip(&found).enumerate() {
            let keyed: Vec<(&str, Rate)> = limits
                .iter()
                .map(|&(k, r)| (names[k].as_str(), r))
                .collect();
            let expected = match (kind, keyed.as_slice()) {
                (Kind::Refund, [(key, rate)]) => {
                    memory.gcra_refund(key, *rate, *cost, *now).await.unwrap();
                    continue;
                }
                (Kind::Dry, [(key, rate)]) => {
                    vec![memory.gcra_peek(key, *rate, *now).await.unwrap()]
                }
                (_, [(key, rate)]) => {
                    vec![memory.gcra_cost(key, *rate, *cost, *now).await.unwrap()]
                }
                _ => memory.gcra_all(&keyed, *now).await.unwrap(),
            };
            let seen: Vec<_> = found
                .tats
                .iter()
                .zip(&keyed)
                .map(|(tat, (_, rate))| gcra_step(*tat, *rate, *now, *cost).0)
                .collect();
            assert_eq!(seen, expected, "operation {i} (seed {seed})");
            assert_eq!(found.admitted, expected.iter().all(|d| d.allowed));
        }
        // A batch of dry spends only is a read (`peek`): it decides as the script and
        // the memory backend do, and changes nothing.
        let peeks: Vec<(usize, Rate)> = (0..names.len())
            .flat_map(|k| rates.iter().map(move |r| (k, *r)))
            .collect();
        let dry: Vec<Op> = peeks
            .iter()
            .map(|&(k, rate)| Op::Spend {
                now_us: now * 1000,
                limits: vec![Limit {
                    key: format!("rf:g:{}", names[k]),
                    step: rate.interval_us(),
                    burst: rate.burst_us(),
                }],
                dry: true,
            })
            .collect();
        for _ in 0..2 {
            let found = Gcra::new().run(&mut conn, &dry).await;
            let found = found.unwrap_or_else(|_| panic!("the dry batch failed (seed {seed})"));
            for (&(k, rate), found) in peeks.iter().zip(&found) {
                let expected = memory.gcra_peek(&names[k], rate, now).await.unwrap();
                assert_eq!(gcra_step(found.tats[0], rate, now, 1).0, expected);
                assert_eq!(found.admitted, expected.allowed, "key {k} (seed {seed})");
            }
        }
        // What the batch left in Redis is what the operations left in memory.
        for (k, name) in names.iter().enumerate() {
            let rate = rates[k % 3];
            let op = Op::Spend {
                now_us: now * 1000,
                limits: vec![Limit {
                    key: format!("rf:g:{name}"),
                    step: rate.interval_us(),
                    burst: rate.burst_us(),
                }],
                dry: false,
            };
            let left = Gcra::new().run(&mut conn, &[op]).await;
            let left = left.unwrap_or_else(|_| panic!("the last batch failed (seed {seed})"));
            let expected = memory.gcra(name, rate, now).await.unwrap();
            let seen = gcra_step(left[0].tats[0], rate, now, 1).0;
            assert_eq!(seen, expected, "key {k} (seed {seed})");
        }
        let admitted = found
            .iter()
            .filter(|f| f.admitted && !f.tats.is_empty())
            .count();
        let spends = plain.iter().filter(|p| p.3 != Kind::Refund).count();
        assert!(
            0 < admitted && admitted < spends,
            "both kinds of decision were tested"
        );
        assert!(
            plain.iter().any(|p| p.3 == Kind::Dry),
            "dry spends were tested (seed {seed})"
        );
    }
}
