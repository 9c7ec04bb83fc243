//! A small HDR-style latency histogram: constant memory, mergeable, bounded relative error.
//!
//! Values below 128 are recorded exactly; larger values fall into one of 64
//! sub-buckets per power of two, so a reported percentile is never more than
//! 1/64 (~1.6 %) above the true sample (and never above the recorded maximum).

use serde::{Deserialize, Serialize};

/// log2 of the number of sub-buckets per power of two.
const SUB_BITS: u32 = 6;
/// Number of sub-buckets per power of two.
const SUB: usize = 1 << SUB_BITS;
/// Values below this are recorded exactly (one bucket per value).
const EXACT: u64 = 1 << (SUB_BITS + 1);
/// Total number of buckets needed to cover all of `u64`.
const BUCKETS: usize = (64 - SUB_BITS as usize - 1) * SUB + 2 * SUB;

/// Mergeable latency histogram over `u64` values (nanoseconds by convention).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

/// Percentile summary of a histogram, all values in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Smallest sample (exact).
    pub min_ns: u64,
    /// Arithmetic mean (exact, rounded down).
    pub mean_ns: u64,
    /// Median.
    pub p50_ns: u64,
    /// 90th percentile.
    pub p90_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// Largest sample (exact).
    pub max_ns: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

/// Bucket index of a value.
fn index_of(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS + 1
    let shift = exp - SUB_BITS; // >= 1
    let mantissa = (v >> shift) as usize; // in [SUB, 2 * SUB)
    shift as usize * SUB + mantissa
}

/// Largest value that maps to bucket `idx`.
fn upper_bound_of(idx: usize) -> u64 {
    if idx < EXACT as usize {
        return idx as u64;
    }
    let shift = (idx / SUB - 1) as u32;
    let mantissa = (idx % SUB + SUB) as u64;
    // (mantissa + 1) << shift may overflow for the very last bucket.
    ((mantissa + 1) << shift)
        .wrapping_sub(1)
        .max(mantissa << shift)
}

impl LatencyHistogram {
    /// Creates an empty histogram.
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// Records one sample.
    pub fn record(&mut self, v: u64) {
        self.counts[index_of(v)] += 1;
        self.count += 1;
        self.sum += u128::from(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Adds all samples of `other` into `self`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += *b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Number of recorded samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Value at quantile `q` (0.0..=1.0) by nearest rank; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0u64;
        for (idx, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper_bound_of(idx).clamp(self.min, self.max);
            }
        }
        self.max
    }

    /// Percentile summary (p50/p90/p99/p99.9, exact min/max/mean).
    pub fn summary(&self) -> LatencySummary {
        if self.count == 0 {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.count,
            min_ns: self.min,
            mean_ns: (self.sum / u128::from(self.count)) as u64,
            p50_ns: self.quantile(0.50),
            p90_ns: self.quantile(0.90),
            p99_ns: self.quantile(0.99),
            p999_ns: self.quantile(0.999),
            max_ns: self.max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_u64() {
        let mut prev = 0usize;
        for v in 0..100_000u64 {
            let i = index_of(v);
            assert!(i == prev || i == prev + 1, "gap at {v}");
            assert!(upper_bound_of(i) >= v);
            prev = i;
        }
        assert_eq!(index_of(u64::MAX), BUCKETS - 1);
        assert_eq!(upper_bound_of(BUCKETS - 1), u64::MAX);
        for shift in 0..64 {
            let v = 1u64 << shift;
            assert!(upper_bound_of(index_of(v)) >= v);
            assert!(upper_bound_of(index_of(v - 1)) >= v - 1);
        }
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = LatencyHistogram::new();
        for v in 1..=100u64 {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), 50);
        assert_eq!(h.quantile(0.9), 90);
        assert_eq!(h.quantile(0.99), 99);
        assert_eq!(h.quantile(1.0), 100);
        assert_eq!(h.quantile(0.0), 1);
        let s = h.summary();
        assert_eq!((s.count, s.min_ns, s.max_ns, s.mean_ns), (100, 1, 100, 50));
    }

    #[test]
    fn large_values_within_relative_error() {
        let mut h = LatencyHistogram::new();
        // 1..=10_000 microseconds, in ns.
        for v in 1..=10_000u64 {
            h.record(v * 1_000);
        }
        for (q, exact) in [(0.5, 5_000_000u64), (0.9, 9_000_000), (0.99, 9_900_000)] {
            let got = h.quantile(q);
            assert!(got >= exact, "q{q}: {got} < {exact}");
            assert!(
                (got - exact) as f64 <= exact as f64 / 64.0,
                "q{q}: {got} vs {exact}"
            );
        }
        assert_eq!(h.quantile(1.0), 10_000_000);
    }

    #[test]
    fn merge_equals_recording_everything() {
        let mut a = LatencyHistogram::new();
        let mut b = LatencyHistogram::new();
        let mut all = LatencyHistogram::new();
        for v in 0..5_000u64 {
            let x = v * 7_919 % 1_000_003;
            if v % 3 == 0 {
                a.record(x)
            } else {
                b.record(x)
            }
            all.record(x);
        }
        a.merge(&b);
        assert_eq!(a, all);
        assert_eq!(a.summary(), all.summary());
    }

    #[test]
    fn empty_summary_is_zero() {
        let h = LatencyHistogram::new();
        assert_eq!(h.summary(), LatencySummary::default());
        assert_eq!(h.quantile(0.99), 0);
        let mut m = LatencyHistogram::new();
        m.merge(&h);
        assert_eq!(m.summary(), LatencySummary::default());
    }
}
