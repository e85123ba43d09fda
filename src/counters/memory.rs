//! Counters in this process's memory: correct for exactly one instance.
//!
//! The keys are spread over shards (a `Mutex<HashMap>` each, chosen by a hash with a
//! per-process random seed, so nobody can aim all their keys at one shard). A lock is
//! held only for one map operation, never across an `.await`.
//!
//! ## Expiry and the size bound
//!
//! Expiry is lazy and follows the caller's `now`, like everything else: an entry past
//! its expiry reads as absent. A GCRA entry expires when its TAT passes (from then on
//! it means "full burst", exactly like no entry); a window counter expires one window
//! after its window ends (the sliding estimate reads the previous window); a stored
//! value expires at the `now + ttl` of the call that stored it.
//!
//! Each shard holds at most `max_entries / SHARDS` keys (rounded up), so an attacker
//! who varies keys (random IPs, random prefixes) cannot exhaust memory. When a new key
//! arrives at a full shard, the shard first drops every expired entry; if that frees
//! less than an eighth of it, it **evicts the entries closest to their expiry** until
//! an eighth is free. Those carry the least state: a GCRA key about to expire is
//! almost back to its full burst anyway, while a key that was driven hard (the one
//! being limited) expires last and is kept. A flood of one-off keys therefore evicts
//! other one-off keys, not the limits that are biting. Freeing an eighth at a time
//! makes the scan amortised O(1) per insert. Redis configured with
//! `maxmemory-policy volatile-ttl` applies the same rule.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use siphasher::sip128::{Hasher128, SipHasher13};

use super::{
    check_key, check_ttl, check_value, check_window, gcra_step, window_of, Counters,
    CountersResult, GcraDecision, Rate, Stored,
};
use crate::clock::Millis;

const SHARDS: usize = 16;

/// The default bound on keys: about 25 MB at worst (an entry is about 60 bytes and a
/// hash table is up to half empty after growing).
pub const DEFAULT_MAX_ENTRIES: usize = 200_000;

pub struct MemoryCounters {
    shards: Box<[Mutex<Shard>]>,
    /// The hash's key, random per process (see [`Slot`]).
    seed: (u64, u64),
    per_shard: usize,
}

/// A key as held: the 128-bit SipHash-1-3 of its text under a random per-process key,
/// instead of the text, so an entry costs the same (about 60 bytes) whatever its key's
/// length. No one who does not know the hash key can aim two keys at one slot; by
/// chance, two of a million keys share a slot with probability about 10⁻²⁷.
type Slot = u128;

#[derive(Default)]
struct Shard {
    map: HashMap<Slot, Entry, BuildHasherDefault<SlotHasher>>,
}

/// The map's hasher: a slot is already a keyed hash, with a per-process random seed, so
/// its low half serves as the table's hash as it is (hashing it again would only cost
/// time). The high half chose the shard.
#[derive(Default)]
struct SlotHasher(u64);

impl Hasher for SlotHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only slots are hashed with it (`write_u128`); any other input still spreads.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(word)).rotate_left(29);
        }
    }

    fn write_u128(&mut self, slot: u128) {
        self.0 = slot as u64;
    }
}

/// The namespaces of the keys: the same key in `gcra`, `incr_window` and
/// `put_if_absent` is three pieces of state.
#[derive(Clone, Copy)]
enum Space {
    Gcra,
    Window { window_ms: i64, index: i64 },
    Value,
}

#[derive(Clone)]
struct Entry {
    value: Value,
    /// The caller-time (ms) from which this entry reads as absent.
    expires_at: Millis,
}

#[derive(Clone)]
enum Value {
    /// A GCRA TAT (µs) or a window count.
    Int(i64),
    /// A value of [`Counters::put_if_absent`].
    Text(Box<str>),
}

impl Value {
    fn int(&self) -> Option<i64> {
        match self {
            Self::Int(n) => Some(*n),
            Self::Text(_) => None,
        }
    }
}

impl Default for MemoryCounters {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ENTRIES)
    }
}

impl std::fmt::Debug for MemoryCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryCounters")
            .field("max_entries", &(self.per_shard * SHARDS))
            .finish_non_exhaustive()
    }
}

impl MemoryCounters {
    /// Holds at most `max_entries` keys (rounded up to a multiple of the shard count).
    pub fn new(max_entries: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            seed: rand::random(),
            per_shard: max_entries.div_ceil(SHARDS).max(1),
        }
    }

    /// Keys held now, including expired ones not yet swept.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shard of `key` in `space`, locked, and the key's slot in it. The parts are
    /// hashed as they are, without building a string of them: the namespace's tag
    /// and numbers have a fixed width and the key comes last, so distinct parts never
    /// hash the same input.
    fn locate(&self, space: Space, key: &str) -> (MutexGuard<'_, Shard>, Slot) {
        let mut h = SipHasher13::new_with_keys(self.seed.0, self.seed.1);
        match space {
            Space::Gcra => h.write_u8(b'g'),
            Space::Value => h.write_u8(b'v'),
            Space::Window { window_ms, index } => {
                h.write_u8(b'w');
                h.write_i64(window_ms);
                h.write_i64(index);
            }
        }
        h.write(key.as_bytes());
        let slot = h.finish128().as_u128();
        // The high half chooses the shard, the low half the place in its table.
        (lock(&self.shards[((slot >> 64) as usize) % SHARDS]), slot)
    }

    fn gcra_now(
        &self,
        key: &str,
        rate: Rate,
        cost: u32,
        now: Millis,
    ) -> CountersResult<GcraDecision> {
        check_key(key)?;
        let (mut shard, k) = self.locate(Space::Gcra, key);
        let tat = shard.get_int(k, now);
        let (decision, new_tat) = gcra_step(tat, rate, now, cost);
        if let Some(new_tat) = new_tat {
            // Absent and "TAT has passed" mean the same, so expire at the TAT.
            let expires_at = new_tat.div_euclid(1000) + 1;
            let entry = Entry {
                value: Value::Int(new_tat),
                expires_at,
            };
            shard.put(k, entry, self.per_shard, now);
        }
        Ok(decision)
    }

    fn refund_now(&self, key: &str, rate: Rate, cost: u32, now: Millis) -> CountersResult<()> {
        check_key(key)?;
        let (mut shard, k) = self.locate(Space::Gcra, key);
        if let Some(tat) = shard.get_int(k, now) {
            let now_us = now.saturating_mul(1000);
            let back = rate.interval_us().saturating_mul(i64::from(cost));
            let new_tat = tat.saturating_sub(back).max(now_us);
            let entry = Entry {
                value: Value::Int(new_tat),
                expires_at: new_tat.div_euclid(1000) + 1,
            };
            shard.put(k, entry, self.per_shard, now);
        }
        Ok(())
    }

    fn incr_now(&self, key: &str, window_ms: i64, by: u64, now: Millis) -> CountersResult<u64> {
        check_key(key)?;
        let window_ms = check_window(window_ms)?;
        let (index, left) = window_of(window_ms, now);
        let (mut shard, k) = self.locate(Space::Window { window_ms, index }, key);
        let count = shard.get_int(k, now).unwrap_or(0);
        // Counts are kept as i64, as in Redis (INCRBY); they saturate rather than wrap.
        let by = i64::try_from(by).unwrap_or(i64::MAX);
        let count = count.saturating_add(by);
        // Kept one window past its end: the sliding estimate reads it then.
        let entry = Entry {
            value: Value::Int(count),
            expires_at: now + left + window_ms,
        };
        shard.put(k, entry, self.per_shard, now);
        Ok(count as u64)
    }

    fn window_now(&self, key: &str, window_ms: i64, now: Millis) -> CountersResult<u64> {
        check_key(key)?;
        let window_ms = check_window(window_ms)?;
        let (index, _) = window_of(window_ms, now);
        let (mut shard, k) = self.locate(Space::Window { window_ms, index }, key);
        let count = shard.get_int(k, now).unwrap_or(0);
        Ok(count.max(0) as u64)
    }
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // The guarded state is plain numbers, valid after any panic.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shard {
    /// The entry under `key` if it is live at `now`; an expired one is dropped.
    fn get(&mut self, key: Slot, now: Millis) -> Option<&Entry> {
        let live = self.map.get(&key).map(|e| e.expires_at > now)?;
        if !live {
            self.map.remove(&key);
            return None;
        }
        self.map.get(&key)
    }

    fn get_int(&mut self, key: Slot, now: Millis) -> Option<i64> {
        self.get(key, now).and_then(|e| e.value.int())
    }

    fn put(&mut self, key: Slot, entry: Entry, cap: usize, now: Millis) {
        if self.map.len() >= cap && !self.map.contains_key(&key) {
            self.make_room(cap, now);
        }
        self.map.insert(key, entry);
    }

    /// Drops expired entries, then the soonest-expiring ones, until an eighth of the
    /// shard is free (see the module docs).
    fn make_room(&mut self, cap: usize, now: Millis) {
        self.map.retain(|_, e| e.expires_at > now);
        let target = cap.saturating_sub((cap / 8).max(1));
        if self.map.len() <= target {
            return;
        }
        let excess = self.map.len() - target;
        let mut expiries: Vec<Millis> = self.map.values().map(|e| e.expires_at).collect();
        let cutoff = *expiries.select_nth_unstable(excess - 1).1;
        // Fewer than `excess` entries expire strictly before the cutoff: drop them all,
        // then as many at the cutoff as needed.
        let mut left = excess;
        self.map.retain(|_, e| {
            let drop = left > 0 && e.expires_at < cutoff;
            left -= usize::from(drop);
            !drop
        });
        self.map.retain(|_, e| {
            let drop = left > 0 && e.expires_at == cutoff;
            left -= usize::from(drop);
            !drop
        });
    }
}

// Every operation is a map look-up under a lock: the batch operations run their
// parts one after another instead of as futures to join.
#[async_trait]
impl Counters for MemoryCounters {
    async fn gcra_cost(
        &self,
        key: &str,
        rate: Rate,
        cost: u32,
        now: Millis,
    ) -> CountersResult<GcraDecision> {
        self.gcra_now(key, rate, cost, now)
    }

    async fn gcra_refund(
        &self,
        key: &str,
        rate: Rate,
        cost: u32,
        now: Millis,
    ) -> CountersResult<()> {
        self.refund_now(key, rate, cost, now)
    }

    async fn gcra_all(
        &self,
        limits: &[(&str, Rate)],
        now: Millis,
    ) -> CountersResult<Vec<GcraDecision>> {
        // Spends each key, then gives back what was spent if any refused, as the
        // trait's default does.
        let spent = limits
            .iter()
            .map(|(key, rate)| self.gcra_now(key, *rate, 1, now))
            .collect::<CountersResult<Vec<_>>>()?;
        for (key, rate) in super::to_give_back(limits, &spent) {
            self.refund_now(key, *rate, 1, now)?;
        }
        Ok(spent)
    }

    async fn incr_window(
        &self,
        key: &str,
        window_ms: i64,
        by: u64,
        now: Millis,
    ) -> CountersResult<u64> {
        self.incr_now(key, window_ms, by, now)
    }

    async fn incr_windows(
        &self,
        incrs: &[(&str, i64, u64)],
        now: Millis,
    ) -> CountersResult<Vec<u64>> {
        incrs
            .iter()
            .map(|(key, w, by)| self.incr_now(key, *w, *by, now))
            .collect()
    }

    async fn get_window(&self, key: &str, window_ms: i64, now: Millis) -> CountersResult<u64> {
        self.window_now(key, window_ms, now)
    }

    async fn get_windows(&self, reads: &[(&str, i64, Millis)]) -> CountersResult<Vec<u64>> {
        reads
            .iter()
            .map(|(key, w, at)| self.window_now(key, *w, *at))
            .collect()
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
        let (mut shard, k) = self.locate(Space::Value, key);
        if let Some(Entry {
            value: Value::Text(held),
            expires_at,
        }) = shard.get(k, now)
        {
            return Ok(Stored {
                value: held.to_string(),
                created: false,
                expires_at: *expires_at,
            });
        }
        let expires_at = now.saturating_add(ttl_ms);
        let entry = Entry {
            value: Value::Text(value.into()),
            expires_at,
        };
        shard.put(k, entry, self.per_shard, now);
        Ok(Stored {
            value: value.to_owned(),
            created: true,
            expires_at,
        })
    }

    async fn get_value(&self, key: &str, now: Millis) -> CountersResult<Option<String>> {
        check_key(key)?;
        let (mut shard, k) = self.locate(Space::Value, key);
        let held = match shard.get(k, now) {
            Some(Entry {
                value: Value::Text(held),
                ..
            }) => Some(held.to_string()),
            _ => None,
        };
        Ok(held)
    }

    async fn ping(&self) -> CountersResult<()> {
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_764_072_000_000;

    #[tokio::test]
    async fn a_flood_of_new_keys_stays_within_the_bound() {
        let c = MemoryCounters::new(64);
        for i in 0..10_000 {
            let key = format!("ip:{i:x}");
            c.gcra(&key, Rate::per_second(1), NOW).await.unwrap();
            c.incr_window(&key, 60_000, 1, NOW).await.unwrap();
        }
        assert!(c.len() <= 64, "{}", c.len());
    }

    #[tokio::test]
    async fn a_flood_of_one_off_keys_does_not_evict_a_biting_limit() {
        let c = MemoryCounters::new(64);
        let victim = Rate::per_hour(3);
        for _ in 0..3 {
            assert!(c.gcra("acct:v", victim, NOW).await.unwrap().allowed);
        }
        assert!(!c.gcra("acct:v", victim, NOW).await.unwrap().allowed);
        for i in 0..10_000 {
            let key = format!("ip:{i:x}");
            c.gcra(&key, Rate::per_second(1), NOW + i / 10)
                .await
                .unwrap();
        }
        let d = c.gcra("acct:v", victim, NOW + 1_000).await.unwrap();
        assert!(!d.allowed, "the limited key was evicted");
    }

    #[tokio::test]
    async fn expired_entries_read_as_absent_and_are_swept() {
        let c = MemoryCounters::new(1_000);
        c.incr_window("p:1", 1_000, 5, NOW).await.unwrap();
        assert_eq!(c.get_window("p:1", 1_000, NOW + 999).await.unwrap(), 5);
        assert_eq!(c.get_window("p:1", 1_000, NOW + 1_000).await.unwrap(), 0);
        c.gcra("n:1", Rate::per_second(1), NOW).await.unwrap();
        assert_eq!(c.len(), 2);
        // Reading the GCRA key after its TAT removes it.
        let d = c
            .gcra("n:1", Rate::per_second(1), NOW + 5_000)
            .await
            .unwrap();
        assert_eq!(d.remaining, 0);
    }
}
