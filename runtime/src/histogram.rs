//! A lock-free latency histogram with logarithmic buckets (about 3% relative resolution from 1 ns
//! to 18 minutes), recorded from many threads with one atomic add, read as quantiles or as
//! Prometheus-style cumulative buckets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Linear sub-buckets per power of two (the resolution: 1/32 of the value).
const SUB: u64 = 32;
const SUB_BITS: u32 = 5;
/// Powers of two above `SUB` covered (values up to 2^(SUB_BITS + OCTAVES) ns, ~18 minutes).
const OCTAVES: u64 = 36;
const BUCKETS: usize = (SUB + OCTAVES * SUB) as usize;

/// Bucket of a value in nanoseconds (values past the last bucket land in it).
fn index(ns: u64) -> usize {
    if ns < SUB {
        return ns as usize;
    }
    let e = 63 - ns.leading_zeros(); // >= SUB_BITS
    let shift = e - SUB_BITS;
    let i = SUB + shift as u64 * SUB + ((ns >> shift) - SUB);
    (i as usize).min(BUCKETS - 1)
}

/// Smallest value (ns) of bucket `i`, and the first value past it.
fn bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB {
        return (i, i + 1);
    }
    let shift = (i - SUB) / SUB;
    let m = SUB + (i - SUB) % SUB;
    (m << shift, (m + 1) << shift)
}

/// Records durations; shareable between threads (`&self` everywhere).
pub struct Histogram {
    counts: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub fn new() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }

    /// Adds one observation (no allocation, no lock).
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[index(ns)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// A consistent-enough copy for reporting (concurrent records may land on either side).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            counts: self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
            max_ns: self.max_ns.load(Ordering::Relaxed),
        }
    }
}

/// A copy of a [`Histogram`]'s counts.
#[derive(Clone, Debug)]
pub struct Snapshot {
    counts: Vec<u64>,
    sum_ns: u64,
    max_ns: u64,
}

impl Snapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_ns)
    }
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns)
    }
    pub fn mean(&self) -> Duration {
        Duration::from_nanos(self.sum_ns / self.count().max(1))
    }

    /// The `q`-quantile (0..=1): the upper edge of the bucket holding it (never an underestimate
    /// by more than the bucket width, ~3%), capped by the largest value seen. Zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        let n = self.count();
        if n == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let hi = bounds(i).1 - 1;
                return Duration::from_nanos(hi.min(self.max_ns));
            }
        }
        self.max()
    }

    /// Observations at or below `d` (exact at bucket edges; a bucket straddling `d` counts as
    /// above it). For Prometheus `le` buckets.
    pub fn count_le(&self, d: Duration) -> u64 {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts
            .iter()
            .enumerate()
            .take_while(|(i, _)| bounds(*i).1 - 1 <= ns)
            .map(|(_, c)| c)
            .sum()
    }

    /// Adds another snapshot's observations into this one.
    pub fn merge(&mut self, o: &Snapshot) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.sum_ns += o.sum_ns;
        self.max_ns = self.max_ns.max(o.max_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_line() {
        for i in 0..BUCKETS - 1 {
            let (lo, hi) = bounds(i);
            assert!(lo < hi);
            assert_eq!(bounds(i + 1).0, hi, "gap after bucket {i}");
            assert_eq!(index(lo), i);
            assert_eq!(index(hi - 1), i);
            if i >= SUB as usize {
                assert!((hi - lo) as f64 / lo as f64 <= 1.0 / 32.0 + 1e-12);
            }
        }
    }

    #[test]
    fn quantiles_within_resolution() {
        let h = Histogram::new();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 1000);
        for (q, want) in [(0.5, 500.0), (0.99, 990.0), (0.999, 999.0), (1.0, 1000.0)] {
            let got = s.quantile(q).as_secs_f64() * 1e6;
            assert!(got >= want - 1e-6 && got <= want * 1.04, "q{q}: {got} vs {want}");
        }
        assert_eq!(s.count_le(Duration::from_secs(1)), 1000);
        let le = s.count_le(Duration::from_micros(100));
        assert!((96..=100).contains(&le), "{le}");
        assert_eq!(s.mean(), Duration::from_nanos(500_500));
        assert_eq!(s.max(), Duration::from_micros(1000));
    }
}
