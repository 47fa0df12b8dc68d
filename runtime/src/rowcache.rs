//! Hot-row cache for embedding tables larger than a memory budget.
//!
//! Contract: a [`RowCache`] holds up to `capacity` rows of `row_bytes` bytes each (one row of
//! a row-wise INT8/INT4 table as stored: its codes, then its scales and offsets), in `sets`
//! sets of `ways` slots (set-associative: a row can live only in the set its index hashes to,
//! so a lookup compares at most `ways` tags). A hit returns the cached bytes; a miss copies the
//! row from the mapped table into the slot of the set's victim (the least recently used row for
//! [`CachePolicy::Lru`]; the least frequently used for [`CachePolicy::Lfu`], with counts halved
//! in a set whenever one saturates, so that rows that were hot long ago age out). The gather
//! dequantizes from the cached bytes exactly as from the table, so values are the same bits.
//!
//! Rows are kept quantized, not widened to f32: a budget then holds 3.7× (INT8, d = 64) to 7×
//! (INT4) more hot rows, and dequantizing a row that is in cache costs less than fetching one
//! that is not.
//!
//! All memory is allocated by [`RowCache::new`]; lookups allocate nothing and take no lock (a
//! cache belongs to one session). Hits, misses and evictions are counted ([`CacheStats`]).
//!
//! Why rows and not pages: the popular rows of a recommendation table are spread over the whole
//! table, so the page cache keeps 4 KiB pages that are mostly cold rows; a row cache spends the
//! budget on hot rows only.

use crate::Error;
use alloc::vec::Vec;

/// Which row a full set gives up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CachePolicy {
    /// The row used longest ago.
    Lru,
    /// The row used least often (counts age by halving).
    #[default]
    Lfu,
}

impl CachePolicy {
    pub fn parse(s: &str) -> Option<CachePolicy> {
        match s {
            "lru" => Some(CachePolicy::Lru),
            "lfu" => Some(CachePolicy::Lfu),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            CachePolicy::Lru => "lru",
            CachePolicy::Lfu => "lfu",
        }
    }
}

/// How a session caches the rows of its large tables; see [`crate::Session::set_row_cache`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowCacheConfig {
    /// Memory budget per table, in bytes: a row-wise quantized table whose stored bytes exceed
    /// it is served through a cache of this many bytes of its hottest rows; smaller tables are
    /// read from the mapped file directly.
    pub bytes: usize,
    pub policy: CachePolicy,
    /// Slots per set (1 = direct-mapped).
    pub ways: usize,
}

impl Default for RowCacheConfig {
    fn default() -> Self {
        RowCacheConfig { bytes: 64 << 20, policy: CachePolicy::Lfu, ways: 8 }
    }
}

/// Counters of one cache since it was made (or since [`RowCache::reset_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Misses that replaced a cached row (the rest filled an empty slot).
    pub evictions: u64,
    /// Rows the cache can hold.
    pub capacity: usize,
    pub policy: CachePolicy,
}

impl CacheStats {
    /// Hits per lookup (0 before any lookup).
    pub fn hit_rate(&self) -> f64 {
        let n = self.hits + self.misses;
        if n == 0 {
            0.0
        } else {
            self.hits as f64 / n as f64
        }
    }
}

const EMPTY: u32 = u32::MAX;
/// LFU counts saturate here; the set's counts are then halved.
const LFU_MAX: u32 = 1 << 16;

/// A set-associative cache of table rows; see the module docs.
pub struct RowCache {
    row_bytes: usize,
    ways: usize,
    sets: usize,
    policy: CachePolicy,
    /// Row index held by each slot (`EMPTY` if none), `sets · ways`.
    tags: Vec<u32>,
    /// LRU: the tick of the last use; LFU: the use count.
    meta: Vec<u32>,
    rows: Vec<u8>,
    tick: u32,
    stats: CacheStats,
    /// A batch's lookups (slot << 1 | miss), made before its rows are read; sized at set-up.
    pub(crate) pending: Vec<u32>,
}

impl RowCache {
    /// A cache of rows of `row_bytes` bytes in at most `bytes` bytes of rows (at least one
    /// set), `ways` slots per set.
    pub fn new(
        row_bytes: usize,
        bytes: usize,
        ways: usize,
        policy: CachePolicy,
    ) -> Result<RowCache, Error> {
        let (ways, row_bytes) = (ways.max(1), row_bytes.max(1));
        // Slots are numbered in 31 bits (a batch's lookups are kept as slot << 1 | miss).
        let sets = (bytes / row_bytes / ways).clamp(1, (u32::MAX as usize >> 1) / ways);
        let slots = sets * ways;
        let alloc_err = || Error::OutOfMemory { bytes: (slots * (row_bytes + 8)) as u64 };
        let mut rows = Vec::new();
        rows.try_reserve_exact(slots * row_bytes).map_err(|_| alloc_err())?;
        rows.resize(slots * row_bytes, 0);
        let mut tags = Vec::new();
        tags.try_reserve_exact(slots).map_err(|_| alloc_err())?;
        tags.resize(slots, EMPTY);
        let mut meta = Vec::new();
        meta.try_reserve_exact(slots).map_err(|_| alloc_err())?;
        meta.resize(slots, 0);
        Ok(RowCache {
            row_bytes,
            ways,
            sets,
            policy,
            tags,
            meta,
            rows,
            tick: 0,
            stats: CacheStats { capacity: slots, policy, ..CacheStats::default() },
            pending: Vec::new(),
        })
    }

    /// Room for a batch of `n` lookups (the gather resolves a whole batch before it reads).
    pub fn reserve_lookups(&mut self, n: usize) -> Result<(), Error> {
        self.pending
            .try_reserve_exact(n.saturating_sub(self.pending.len()))
            .map_err(|_| Error::OutOfMemory { bytes: 4 * n as u64 })
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }
    pub fn reset_stats(&mut self) {
        let (capacity, policy) = (self.stats.capacity, self.policy);
        self.stats = CacheStats { capacity, policy, ..CacheStats::default() };
    }
    /// Bytes of rows held (the budget rounded down to whole sets).
    pub fn bytes(&self) -> usize {
        self.rows.len()
    }

    /// The set of `row`: a multiplicative hash mapped onto `0..sets` by a multiply and shift
    /// (any number of sets, so the whole budget is used).
    fn set_of(&self, row: u32) -> usize {
        let h = (row as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((h as u128 * self.sets as u128) >> 64) as usize
    }

    /// Starts loading the tags and counters of `row`'s set (a lookup soon will read them).
    #[inline]
    pub fn prefetch_set(&self, row: u32) {
        let base = self.set_of(row) * self.ways;
        ember_kernels::prefetch::prefetch(self.tags[base..].as_ptr() as *const u8, 4 * self.ways);
        ember_kernels::prefetch::prefetch(self.meta[base..].as_ptr() as *const u8, 4 * self.ways);
    }

    /// Row `row`: the cached bytes, or `fill(slot)` writes them into the slot first (`slot`
    /// holds `row_bytes` bytes). `row` must be below `u32::MAX`.
    #[inline]
    pub fn get(&mut self, row: u32, fill: impl FnOnce(&mut [u8])) -> &[u8] {
        let (slot, miss) = self.lookup(row);
        if miss {
            fill(self.slot_mut(slot));
        }
        self.slot(slot)
    }

    /// The bookkeeping half of [`RowCache::get`]: the slot that holds (or, on a miss, is now
    /// assigned to) `row`, and whether it was a miss. After a miss the caller must write the
    /// row into [`RowCache::slot_mut`] before reading it. Lookups of a batch can all be made
    /// first and the rows filled and read afterwards in the same order: a slot reassigned
    /// within the batch is then refilled after its earlier reader has read it.
    #[inline]
    pub fn lookup(&mut self, row: u32) -> (usize, bool) {
        let base = self.set_of(row) * self.ways;
        let ways = base..base + self.ways;
        self.tick = self.tick.wrapping_add(1);
        match self.tags[ways.clone()].iter().position(|t| *t == row) {
            Some(w) => {
                self.stats.hits += 1;
                let s = base + w;
                match self.policy {
                    CachePolicy::Lru => self.meta[s] = self.tick,
                    CachePolicy::Lfu => {
                        self.meta[s] += 1;
                        if self.meta[s] >= LFU_MAX {
                            self.meta[ways].iter_mut().for_each(|m| *m /= 2);
                        }
                    }
                }
                (s, false)
            }
            None => {
                self.stats.misses += 1;
                let s = base + self.victim(base);
                if self.tags[s] != EMPTY {
                    self.stats.evictions += 1;
                }
                self.tags[s] = row;
                self.meta[s] = match self.policy {
                    CachePolicy::Lru => self.tick,
                    CachePolicy::Lfu => 1,
                };
                (s, true)
            }
        }
    }

    /// The bytes of slot `s` (from [`RowCache::lookup`]).
    #[inline]
    pub fn slot(&self, s: usize) -> &[u8] {
        &self.rows[s * self.row_bytes..(s + 1) * self.row_bytes]
    }

    #[inline]
    pub fn slot_mut(&mut self, s: usize) -> &mut [u8] {
        &mut self.rows[s * self.row_bytes..(s + 1) * self.row_bytes]
    }

    /// Starts loading slot `s`'s bytes.
    #[inline]
    pub fn prefetch_slot(&self, s: usize) {
        ember_kernels::prefetch::prefetch(self.slot(s).as_ptr(), self.row_bytes);
    }

    /// The slot (within the set at `base`) a miss takes: an empty one, else the policy's choice.
    fn victim(&self, base: usize) -> usize {
        let tags = &self.tags[base..base + self.ways];
        if let Some(w) = tags.iter().position(|t| *t == EMPTY) {
            return w;
        }
        let meta = &self.meta[base..base + self.ways];
        match self.policy {
            // Age = ticks since last use (wrapping-safe); the oldest goes.
            CachePolicy::Lru => {
                (0..self.ways).max_by_key(|w| self.tick.wrapping_sub(meta[*w])).unwrap_or(0)
            }
            CachePolicy::Lfu => (0..self.ways).min_by_key(|w| meta[*w]).unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill_with(r: u32) -> impl FnOnce(&mut [u8]) {
        move |o: &mut [u8]| {
            o.iter_mut().enumerate().for_each(|(j, v)| *v = (r * 10 + j as u32) as u8)
        }
    }

    #[test]
    fn sizes_use_the_budget_in_whole_sets() {
        let c = RowCache::new(16, 16 * 102, 4, CachePolicy::Lru).unwrap();
        // 102 rows of 16 bytes, 4 ways: 25 whole sets.
        assert_eq!(c.stats().capacity, 100);
        assert_eq!(c.bytes(), 100 * 16);
        assert_eq!(RowCache::new(16, 1, 8, CachePolicy::Lfu).unwrap().stats().capacity, 8);
    }

    #[test]
    fn hits_return_what_the_miss_filled_and_are_counted() {
        let mut c = RowCache::new(3, 1 << 12, 4, CachePolicy::Lru).unwrap();
        assert_eq!(c.get(7, fill_with(7)), &[70, 71, 72]);
        assert_eq!(c.get(7, |_| panic!("a hit must not refill")), &[70, 71, 72]);
        assert_eq!(c.get(8, fill_with(8)), &[80, 81, 82]);
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.evictions), (1, 2, 0));
        assert!((s.hit_rate() - 1.0 / 3.0).abs() < 1e-12);
        c.reset_stats();
        assert_eq!(c.stats().hits + c.stats().misses, 0);
        assert_eq!(c.get(8, |_| panic!("rows stay after a reset")), &[80, 81, 82]);
    }

    /// One set of `ways` slots: every row lands in it.
    fn one_set(ways: usize, p: CachePolicy) -> RowCache {
        let c = RowCache::new(4, 4 * ways, ways, p).unwrap();
        assert_eq!(c.stats().capacity, ways);
        c
    }

    #[test]
    fn lru_evicts_the_row_used_longest_ago() {
        let mut c = one_set(2, CachePolicy::Lru);
        c.get(1, fill_with(1));
        c.get(2, fill_with(2));
        c.get(1, |_| panic!("hit"));
        c.get(3, fill_with(3)); // evicts 2, the least recently used
        c.get(1, |_| panic!("1 was used after 2"));
        let mut refilled = false;
        c.get(2, |o| {
            refilled = true;
            o[0] = 20
        });
        assert!(refilled, "2 was evicted");
        assert_eq!(c.stats().evictions, 2);
    }

    #[test]
    fn lfu_keeps_the_frequent_row_and_ages_counts() {
        let mut c = one_set(2, CachePolicy::Lfu);
        for _ in 0..5 {
            c.get(1, fill_with(1));
        }
        // A stream of one-off rows never pushes out the frequent one.
        for r in 10..50 {
            c.get(r, fill_with(r));
            c.get(1, |_| panic!("the frequent row stays"));
        }
        // LRU on the same stream loses it whenever two one-offs come in a row.
        let mut l = one_set(2, CachePolicy::Lru);
        l.get(1, fill_with(1));
        l.get(10, fill_with(10));
        l.get(11, fill_with(11));
        let mut miss = false;
        l.get(1, |_| miss = true);
        assert!(miss);
        // Saturated counts are halved, so a once-hot row can be displaced later.
        let mut c = one_set(1, CachePolicy::Lfu);
        for _ in 0..LFU_MAX + 3 {
            c.get(5, fill_with(5));
        }
        assert!(c.meta[0] < LFU_MAX, "aged: {}", c.meta[0]);
    }

    #[test]
    fn skewed_lookups_hit_more_with_more_room() {
        // Zipf-like ids (rank r drawn with weight 1/r) over 10,000 rows.
        let mut seed = 12345u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let n = 10_000f64;
        let ids: Vec<u32> = (0..50_000)
            .map(|_| {
                let u = (next() >> 11) as f64 / (1u64 << 53) as f64;
                (n.powf(u) - 1.0) as u32 // log-uniform ≈ Zipf(1)
            })
            .collect();
        let rate = |rows: usize, p: CachePolicy| {
            let mut c = RowCache::new(8, rows * 8, 8, p).unwrap();
            ids.iter().for_each(|r| {
                c.get(*r, fill_with(*r));
            });
            c.stats().hit_rate()
        };
        for p in [CachePolicy::Lru, CachePolicy::Lfu] {
            let (small, big) = (rate(256, p), rate(2048, p));
            assert!(small > 0.3 && big > small + 0.1, "{p:?}: {small} {big}");
        }
    }
}
