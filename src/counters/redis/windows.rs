//! Window counts of concurrent callers, in one transaction.
//!
//! Every request of a busy instance counts something (a send, a delivery, an approval).
//! [`Windows`] merges the counts of a batch (see [`super::batch`]) into one `MULTI`:
//! one `INCRBY` and one `PEXPIRE` per distinct key, and answers each caller with the
//! counts it would have seen had the calls run one after another, in order.

use std::collections::HashMap;

use redis::aio::ConnectionManager;

use super::batch::{Batch, Failure};

/// One window key to count: the Redis key, how long to keep it, by how much.
pub(super) struct Incr {
    pub key: String,
    pub keep_ms: i64,
    pub by: u64,
}

/// Window counts as a [`Batch`]: a call is the increments of one caller, its answer
/// each one's count after it.
pub(super) struct Windows;

impl Batch for Windows {
    type Call = Vec<Incr>;
    type Answer = Vec<u64>;

    const MAX_WEIGHT: usize = 2048;

    fn weight(call: &Vec<Incr>) -> usize {
        call.len()
    }

    async fn run(
        &self,
        conn: &mut ConnectionManager,
        calls: &[Vec<Incr>],
    ) -> Result<Vec<Vec<u64>>, Failure> {
        let plan = Plan::of(calls.iter().map(Vec::as_slice));
        let mut tx = redis::pipe();
        tx.atomic();
        for key in &plan.keys {
            tx.incr(&key.key, i64::try_from(key.total).unwrap_or(i64::MAX))
                .pexpire(&key.key, key.keep_ms)
                .ignore();
        }
        let finals: Vec<i64> = tx.query_async(conn).await.map_err(Failure::Redis)?;
        if finals.len() != plan.keys.len() {
            return Err(Failure::WrongCount);
        }
        Ok(plan.counts(&finals))
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
