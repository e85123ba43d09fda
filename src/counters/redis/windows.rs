//! Window counts of concurrent callers, in one transaction.
//!
//! Every request of a busy instance counts something (a send, a delivery, an approval),
//! and each count is a round trip: encoding, a write to the socket, a wake-up for the
//! answer. The batcher is one task that takes every count waiting for it, merges them
//! into one `MULTI` (one `INCRBY` and one `PEXPIRE` per distinct key) and answers each
//! caller with the counts it would have seen had the calls run one after another, in
//! the order they reached the task. One batch is in flight at a time, so batches grow
//! with the load: alone, a call is its own batch, as before.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};

use super::super::{CountersError, CountersResult};

/// At most this many callers share a transaction.
const MAX_CALLS: usize = 512;

/// One window key to count: the Redis key, how long to keep it, by how much.
pub(super) struct Incr {
    pub key: String,
    pub keep_ms: i64,
    pub by: u64,
}

struct Call {
    incrs: Vec<Incr>,
    reply: oneshot::Sender<CountersResult<Vec<u64>>>,
}

/// The handle callers count through; dropping the last one ends the task.
pub(super) struct WindowBatcher {
    tx: mpsc::UnboundedSender<Call>,
}

impl WindowBatcher {
    /// Starts the task on the current Tokio runtime. `describe` turns a failure into
    /// the error every caller of the failed batch gets.
    pub fn spawn(
        conn: ConnectionManager,
        timeout: Duration,
        describe: impl Fn(Failure) -> CountersError + Send + 'static,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(drive(rx, conn, timeout, describe));
        Self { tx }
    }

    /// Counts `incrs` and returns each one's count after it, in order.
    pub async fn incr(&self, incrs: Vec<Incr>) -> CountersResult<Vec<u64>> {
        let (reply, answer) = oneshot::channel();
        let stopped = || CountersError::Unavailable("redis: the counting task has stopped".into());
        self.tx.send(Call { incrs, reply }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Why a batch failed, for [`WindowBatcher::spawn`]'s `describe`.
pub(super) enum Failure {
    Redis(redis::RedisError),
    Timeout,
    WrongCount,
}

async fn drive(
    mut rx: mpsc::UnboundedReceiver<Call>,
    mut conn: ConnectionManager,
    timeout: Duration,
    describe: impl Fn(Failure) -> CountersError,
) {
    while let Some(first) = rx.recv().await {
        let mut calls = vec![first];
        while calls.len() < MAX_CALLS {
            match rx.try_recv() {
                Ok(call) => calls.push(call),
                Err(_) => break,
            }
        }
        let plan = Plan::of(calls.iter().map(|c| c.incrs.as_slice()));
        let mut tx = redis::pipe();
        tx.atomic();
        for key in &plan.keys {
            tx.incr(&key.key, i64::try_from(key.total).unwrap_or(i64::MAX))
                .pexpire(&key.key, key.keep_ms)
                .ignore();
        }
        let outcome =
            match tokio::time::timeout(timeout, tx.query_async::<Vec<i64>>(&mut conn)).await {
                Ok(Ok(finals)) if finals.len() == plan.keys.len() => Ok(finals),
                Ok(Ok(_)) => Err(describe(Failure::WrongCount)),
                Ok(Err(e)) => Err(describe(Failure::Redis(e))),
                Err(_) => Err(describe(Failure::Timeout)),
            };
        match outcome {
            Ok(finals) => {
                for (call, counts) in calls.into_iter().zip(plan.counts(&finals)) {
                    // A caller that gave up (its own timeout) no longer listens.
                    let _ = call.reply.send(Ok(counts));
                }
            }
            Err(e) => {
                for call in calls {
                    let _ = call.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The distinct keys of a batch with their totals, and where each call's counts sit.
struct Plan {
    keys: Vec<PlannedKey>,
    /// Per call, per increment: the index of its key in `keys` and its amount.
    slots: Vec<Vec<(usize, u64)>>,
}

struct PlannedKey {
    key: String,
    keep_ms: i64,
    total: u64,
}

impl Plan {
    fn of<'a>(calls: impl Iterator<Item = &'a [Incr]>) -> Self {
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut keys: Vec<PlannedKey> = Vec::new();
        let mut slots = Vec::new();
        for incrs in calls {
            let mut call_slots = Vec::with_capacity(incrs.len());
            for incr in incrs {
                let at = *index.entry(incr.key.as_str()).or_insert_with(|| {
                    keys.push(PlannedKey {
                        key: incr.key.clone(),
                        keep_ms: incr.keep_ms,
                        total: 0,
                    });
                    keys.len() - 1
                });
                let k = &mut keys[at];
                k.total = k.total.saturating_add(incr.by);
                // Callers' clocks differ by the batch's age: keep for the longest.
                k.keep_ms = k.keep_ms.max(incr.keep_ms);
                call_slots.push((at, incr.by));
            }
            slots.push(call_slots);
        }
        Self { keys, slots }
    }

    /// Each call's counts, given every key's count after the whole batch: as if the
    /// calls had run one after another in order.
    fn counts(&self, finals: &[i64]) -> Vec<Vec<u64>> {
        let mut running: Vec<u64> = self
            .keys
            .iter()
            .zip(finals)
            .map(|(k, f)| u64::try_from(*f).unwrap_or(0).saturating_sub(k.total))
            .collect();
        self.slots
            .iter()
            .map(|call| {
                call.iter()
                    .map(|&(at, by)| {
                        running[at] = running[at].saturating_add(by);
                        running[at]
                    })
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incr(key: &str, keep_ms: i64, by: u64) -> Incr {
        Incr {
            key: key.into(),
            keep_ms,
            by,
        }
    }

    #[test]
    fn a_batch_counts_as_its_calls_one_after_another() {
        let calls = [
            vec![incr("a", 100, 2), incr("b", 100, 5), incr("a", 100, 1)],
            vec![incr("b", 300, 1)],
            vec![incr("a", 50, 4)],
        ];
        let plan = Plan::of(calls.iter().map(Vec::as_slice));
        let keys: Vec<_> = plan
            .keys
            .iter()
            .map(|k| (k.key.as_str(), k.keep_ms, k.total))
            .collect();
        assert_eq!(keys, [("a", 100, 7), ("b", 300, 6)]);
        // Redis held a = 10 and b = 0 before the batch.
        let counts = plan.counts(&[17, 6]);
        assert_eq!(counts, [vec![12, 5, 13], vec![6], vec![17]]);
    }
}
