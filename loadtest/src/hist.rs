//! A lock-free log-linear latency histogram: many tasks record into one shared instance with a
//! relaxed atomic add, percentiles are read at the end (or for the progress line).
//!
//! Values are nanoseconds. Below 64 ns each value has its own bucket; above, every power of two
//! is split into 64 equal buckets, so a bucket is at most 1/64 (1.6 %) of its value wide. The largest recordable value
//! is [`MAX_NS`] (about 68 s); larger values are clamped to it and still counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bits of sub-bucket precision per power of two (64 buckets: ≤ 1.6 % relative error).
const SUB_BITS: u32 = 6;
/// Sub-buckets per power of two.
const SUB: u64 = 1 << SUB_BITS;
/// Powers of two covered above the linear range: up to 2^36 ns ≈ 68.7 s.
const OCTAVES: u32 = 36 - SUB_BITS + 1;
/// Total buckets.
const BUCKETS: usize = (SUB as usize) * (OCTAVES as usize + 1);
/// Largest recordable value, ns (larger ones are clamped).
pub const MAX_NS: u64 = (1 << 36) - 1;

/// A shared latency histogram (see the module docs).
#[derive(Debug)]
pub struct Histogram {
    /// Counts per bucket.
    buckets: Box<[AtomicU64]>,
    /// Number of values.
    count: AtomicU64,
    /// Sum of values, ns (for the mean).
    sum_ns: AtomicU64,
    /// Largest value, ns (exact).
    max_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }
}

/// Bucket index of `v` ns.
fn index_of(v: u64) -> usize {
    let v = v.min(MAX_NS);
    if v < SUB {
        return v as usize;
    }
    let top = 63 - v.leading_zeros(); // ≥ SUB_BITS
    let shift = top - SUB_BITS;
    let octave = u64::from(shift) + 1;
    let sub = (v >> shift) - SUB; // 0..SUB
    (octave * SUB + sub) as usize
}

/// Highest value that falls in bucket `i` (what a percentile reports: on the safe side).
fn upper_of(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let octave = i / SUB;
    let sub = i % SUB;
    let shift = octave - 1;
    ((SUB + sub + 1) << shift) - 1
}

impl Histogram {
    /// Records one value.
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).min(MAX_NS);
        self.buckets[index_of(ns)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// A consistent-enough copy for reporting.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
            max_ns: self.max_ns.load(Ordering::Relaxed),
        }
    }
}

/// A copy of a [`Histogram`]'s counts.
#[derive(Debug, Clone)]
pub struct Snapshot {
    buckets: Vec<u64>,
    sum_ns: u64,
    max_ns: u64,
}

impl Snapshot {
    /// Number of values.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The value at quantile `q` (0..=1), ns: the upper edge of the bucket holding the
    /// `ceil(q·n)`-th smallest value, never above the exact maximum. 0 when empty.
    pub fn quantile_ns(&self, q: f64) -> u64 {
        let n = self.count();
        if n == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper_of(i).min(self.max_ns);
            }
        }
        self.max_ns
    }

    /// The exact maximum, ns.
    pub fn max_ns(&self) -> u64 {
        self.max_ns
    }

    /// The mean, ns (0 when empty).
    pub fn mean_ns(&self) -> u64 {
        self.sum_ns.checked_div(self.count()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..2_000_000u64).step_by(7).chain([MAX_NS]) {
            let i = index_of(v);
            assert!(i >= last, "index must not decrease at {v}");
            last = i;
            let up = upper_of(i);
            assert!(up >= v, "upper {up} below {v}");
            assert!(up - v <= v / 64 + 1, "bucket of {v} too wide: {up}");
        }
        assert!(index_of(MAX_NS) < BUCKETS);
        assert_eq!(index_of(u64::MAX), index_of(MAX_NS));
    }

    #[test]
    fn quantiles_of_a_known_distribution() {
        let h = Histogram::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 1000);
        let p50 = s.quantile_ns(0.5);
        assert!((500_000..=508_000).contains(&p50), "{p50}");
        let p99 = s.quantile_ns(0.99);
        assert!((990_000..=1_000_000).contains(&p99), "{p99}");
        assert_eq!(s.quantile_ns(1.0), 1_000_000);
        assert_eq!(s.max_ns(), 1_000_000);
        assert_eq!(s.mean_ns(), 500_500);
    }

    #[test]
    fn empty_and_huge_values() {
        let h = Histogram::default();
        assert_eq!(h.snapshot().quantile_ns(0.99), 0);
        h.record(Duration::from_secs(3600));
        assert_eq!(h.snapshot().max_ns(), MAX_NS);
        assert_eq!(h.snapshot().quantile_ns(0.5), MAX_NS);
    }
}
