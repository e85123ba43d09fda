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
//!
//! ## Memory
//!
//! Numbers (GCRA TATs, window counts: nearly every key) and texts (`put_if_absent`'s
//! marks, a handful) live in two tables of a shard, so that a number's entry is 32
//! bytes with its slot rather than the 48 an entry that might hold a text takes. A hash
//! table marks a removed entry with a tombstone, and once tombstones and entries fill
//! it, a table more than half full doubles rather than rehashing in place: under a
//! steady churn of one-off keys (one per new number) a full shard would end at twice
//! its size. Making room therefore rebuilds the number table at the size the bound
//! needs, and an entry found expired is left for that sweep (a new value for its key
//! overwrites it in place) rather than removed on the spot. At the default bound the
//! tables take about 9 MB (16 × 16,384 buckets of 33 bytes).

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

/// The default bound on keys: about 9 MB of tables (see the module docs, "Memory").
pub const DEFAULT_MAX_ENTRIES: usize = 200_000;

pub struct MemoryCounters {
    shards: Box<[Mutex<Shard>]>,
    /// The hash's key, random per process (see [`Slot`]).
    seed: (u64, u64),
    per_shard: usize,
}

/// A key as held: the 128-bit SipHash-1-3 of its text under a random per-process key,
/// instead of the text, so an entry costs the same (33 bytes in its table) whatever its
/// key's length. No one who does not know the hash key can aim two keys at one slot; by
/// chance, two of a million keys share a slot with probability about 10⁻²⁷.
type Slot = u128;

#[derive(Default)]
struct Shard {
    ints: Table<i64>,
    texts: Table<Box<str>>,
}

type Table<V> = HashMap<Slot, Entry<V>, BuildHasherDefault<SlotHasher>>;

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

struct Entry<V> {
    /// A GCRA TAT (µs) or a window count; or the text of [`Counters::put_if_absent`].
    value: V,
    /// The caller-time (ms) from which this entry reads as absent.
    expires_at: Millis,
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
        self.shards.iter().map(|s| lock(s).len()).sum()
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

    /// One GCRA step on `key`; `spend: false` decides without writing.
    fn gcra_now(
        &self,
        key: &str,
        rate: Rate,
        cost: u32,
        now: Millis,
        spend: bool,
    ) -> CountersResult<GcraDecision> {
        check_key(key)?;
        let (mut shard, k) = self.locate(Space::Gcra, key);
        let tat = shard.get_int(k, now);
        let (decision, new_tat) = gcra_step(tat, rate, now, cost);
        if let Some(new_tat) = new_tat.filter(|_| spend) {
            // Absent and "TAT has passed" mean the same, so expire at the TAT.
            let expires_at = new_tat.div_euclid(1000) + 1;
            let entry = Entry {
                value: new_tat,
                expires_at,
            };
            shard.put_int(k, entry, self.per_shard, now);
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
                value: new_tat,
                expires_at: new_tat.div_euclid(1000) + 1,
            };
            shard.put_int(k, entry, self.per_shard, now);
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
            value: count,
            expires_at: now + left + window_ms,
        };
        shard.put_int(k, entry, self.per_shard, now);
        Ok(count as u64)
    }

    fn window_now(&self, key: &str, window_ms: i64, now: Millis) -> CountersResult<u64> {
        check_key(key)?;
        let window_ms = check_window(window_ms)?;
        let (index, _) = window_of(window_ms, now);
        let (shard, k) = self.locate(Space::Window { window_ms, index }, key);
        let count = shard.get_int(k, now).unwrap_or(0);
        Ok(count.max(0) as u64)
    }
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // The guarded state is plain numbers, valid after any panic.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The entry under `key` if it is live at `now`. One found expired stays until the
/// next sweep (see "Memory" in the module docs).
fn live<V>(table: &Table<V>, key: Slot, now: Millis) -> Option<&Entry<V>> {
    table.get(&key).filter(|e| e.expires_at > now)
}

/// Drops, in table order, entries whose expiry `pick`s out, while `left` is above 0.
fn evict<V>(table: &mut Table<V>, left: &mut usize, pick: impl Fn(Millis) -> bool) {
    table.retain(|_, e| {
        let drop = *left > 0 && pick(e.expires_at);
        *left -= usize::from(drop);
        !drop
    });
}

impl Shard {
    fn len(&self) -> usize {
        self.ints.len() + self.texts.len()
    }

    fn get_int(&self, key: Slot, now: Millis) -> Option<i64> {
        live(&self.ints, key, now).map(|e| e.value)
    }

    fn get_text(&self, key: Slot, now: Millis) -> Option<&Entry<Box<str>>> {
        live(&self.texts, key, now)
    }

    fn put_int(&mut self, key: Slot, entry: Entry<i64>, cap: usize, now: Millis) {
        if self.len() >= cap && !self.ints.contains_key(&key) {
            self.make_room(cap, now);
        }
        self.ints.insert(key, entry);
    }

    fn put_text(&mut self, key: Slot, entry: Entry<Box<str>>, cap: usize, now: Millis) {
        if self.len() >= cap && !self.texts.contains_key(&key) {
            self.make_room(cap, now);
        }
        self.texts.insert(key, entry);
    }

    /// Drops expired entries, then the soonest-expiring ones, until an eighth of the
    /// shard is free (see the module docs); then rebuilds the number table at the size
    /// `cap` needs, without the tombstones of what was removed.
    fn make_room(&mut self, cap: usize, now: Millis) {
        self.ints.retain(|_, e| e.expires_at > now);
        self.texts.retain(|_, e| e.expires_at > now);
        let target = cap.saturating_sub((cap / 8).max(1));
        if self.len() > target {
            let excess = self.len() - target;
            let mut expiries: Vec<Millis> = (self.ints.values().map(|e| e.expires_at))
                .chain(self.texts.values().map(|e| e.expires_at))
                .collect();
            let cutoff = *expiries.select_nth_unstable(excess - 1).1;
            // Fewer than `excess` entries expire strictly before the cutoff: drop them
            // all, then as many at the cutoff as needed.
            let mut left = excess;
            evict(&mut self.ints, &mut left, |at| at < cutoff);
            evict(&mut self.texts, &mut left, |at| at < cutoff);
            evict(&mut self.ints, &mut left, |at| at == cutoff);
            evict(&mut self.texts, &mut left, |at| at == cutoff);
        }
        let mut ints = Table::with_capacity_and_hasher(cap, Default::default());
        ints.extend(self.ints.drain());
        self.ints = ints;
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
        self.gcra_now(key, rate, cost, now, true)
    }

    async fn gcra_peek(&self, key: &str, rate: Rate, now: Millis) -> CountersResult<GcraDecision> {
        self.gcra_now(key, rate, 1, now, false)
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
            .map(|(key, rate)| self.gcra_now(key, *rate, 1, now, true))
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
        if let Some(held) = shard.get_text(k, now) {
            return Ok(Stored {
                value: held.value.to_string(),
                created: false,
                expires_at: held.expires_at,
            });
        }
        let expires_at = now.saturating_add(ttl_ms);
        let entry = Entry {
            value: value.into(),
            expires_at,
        };
        shard.put_text(k, entry, self.per_shard, now);
        Ok(Stored {
            value: value.to_owned(),
            created: true,
            expires_at,
        })
    }

    async fn get_value(&self, key: &str, now: Millis) -> CountersResult<Option<String>> {
        check_key(key)?;
        let (shard, k) = self.locate(Space::Value, key);
        let held = shard.get_text(k, now).map(|e| e.value.to_string());
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
        // Read after its TAT, the GCRA key is a full burst again; its new TAT takes
        // the expired entry's place.
        let d = c
            .gcra("n:1", Rate::per_second(1), NOW + 5_000)
            .await
            .unwrap();
        assert_eq!(d.remaining, 0);
        assert_eq!(c.len(), 2);
    }

    #[tokio::test]
    async fn a_churn_of_one_off_keys_keeps_each_table_at_its_size() {
        // One new key per new number, as at sign-up: without the rebuild, the
        // tombstones of evicted keys make a full table double.
        let per_shard = 64;
        let c = MemoryCounters::new(SHARDS * per_shard);
        let sized =
            Table::<i64>::with_capacity_and_hasher(per_shard, Default::default()).capacity();
        for i in 0..100_000 {
            let key = format!("n:{i:x}");
            c.gcra(&key, Rate::per_hour(5), NOW + i / 100)
                .await
                .unwrap();
        }
        assert!(c.len() <= SHARDS * per_shard, "{}", c.len());
        for shard in c.shards.iter() {
            let held = lock(shard).ints.capacity();
            assert!(
                held <= sized,
                "a table holds room for {held}, sized for {sized}"
            );
        }
    }

    #[tokio::test]
    async fn texts_and_numbers_share_the_bound() {
        let c = MemoryCounters::new(SHARDS * 8);
        for i in 0..1_000 {
            let key = format!("mark:{i:x}");
            c.put_if_absent(&key, "closed", 60_000, NOW).await.unwrap();
            c.incr_window(&key, 60_000, 1, NOW).await.unwrap();
        }
        assert!(c.len() <= SHARDS * 8, "{}", c.len());
        let kept = c
            .put_if_absent("mark:new", "v1", 60_000, NOW)
            .await
            .unwrap();
        assert!(kept.created);
        let again = c
            .put_if_absent("mark:new", "v2", 60_000, NOW)
            .await
            .unwrap();
        assert_eq!((again.created, again.value.as_str()), (false, "v1"));
        assert_eq!(
            c.get_value("mark:new", NOW).await.unwrap().as_deref(),
            Some("v1")
        );
        assert_eq!(c.get_value("mark:new", NOW + 60_000).await.unwrap(), None);
    }
}
