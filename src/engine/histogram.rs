//! A latency histogram with fixed buckets and atomic counters: recording
//! is a few comparisons and three relaxed atomic adds, no lock, so it is
//! cheap on the IO path. Read by `show stats` and the metrics endpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds (Prometheus `le`), from 50 µs
/// (a page-cache read) to 10 s (a path about to hit io_timeout); longer
/// durations count in the implicit `+Inf` bucket only.
pub const BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// The same bounds in nanoseconds, for the comparison on record.
const BUCKETS_NS: [u64; 16] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
];

/// Durations counted per bucket (not cumulative), plus their sum and count.
#[derive(Debug, Default)]
pub struct Histogram {
    /// `buckets[i]`: durations in `(BUCKETS[i-1], BUCKETS[i]]`; the last
    /// slot counts those above the largest bound.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Counts one duration.
    #[inline]
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKETS_NS
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(BUCKETS_NS.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now. Not atomic as a whole: a concurrent record may be
    /// in the count but not yet in its bucket (or the reverse); the
    /// snapshot evens that out (`count` is the sum of the buckets).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets = [0u64; BUCKETS.len() + 1];
        for (s, b) in buckets.iter_mut().zip(&self.buckets) {
            *s = b.load(Ordering::Relaxed);
        }
        HistogramSnapshot {
            buckets,
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

/// A histogram's counts at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Per bucket, not cumulative; the last is above the largest bound.
    pub buckets: [u64; BUCKETS.len() + 1],
    /// Sum of the durations, in nanoseconds.
    pub sum_ns: u64,
}

impl HistogramSnapshot {
    /// Durations counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Sum of the durations, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns as f64 / 1e9
    }

    /// `(upper bound, count)` per bucket, not cumulative, the last bound
    /// `+Inf`.
    pub fn bounded(&self) -> Vec<(f64, u64)> {
        BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.buckets.iter().copied())
            .collect()
    }

    /// What was counted between `earlier` and this snapshot.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        let mut buckets = self.buckets;
        for (b, e) in buckets.iter_mut().zip(&earlier.buckets) {
            *b = b.saturating_sub(*e);
        }
        HistogramSnapshot {
            buckets,
            sum_ns: self.sum_ns.saturating_sub(earlier.sum_ns),
        }
    }

    /// The upper bound (seconds) of the bucket holding the `q` quantile
    /// (`None` with nothing counted; `INFINITY` above the largest bound).
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((count as f64) * q).ceil().max(1.0) as u64;
        let mut acc = 0;
        for (le, n) in self.bounded() {
            acc += n;
            if acc >= rank {
                return Some(le);
            }
        }
        Some(f64::INFINITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_sum() {
        let h = Histogram::default();
        h.record(Duration::from_micros(10));
        h.record(Duration::from_micros(50));
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(20));
        let s = h.snapshot();
        assert_eq!(s.count(), 4);
        assert_eq!(
            s.buckets[0], 2,
            "50 µs is in the first bucket (le is inclusive)"
        );
        assert_eq!(s.buckets[BUCKETS.len()], 1, "20 s is above every bound");
        let b = s.bounded();
        assert_eq!(b[0], (0.00005, 2));
        assert_eq!(b.last(), Some(&(f64::INFINITY, 1)));
        assert_eq!(s.quantile_bound(0.5), Some(0.00005));
        assert_eq!(s.quantile_bound(0.75), Some(0.005));
        assert_eq!(s.quantile_bound(0.99), Some(f64::INFINITY));
        let later = {
            h.record(Duration::from_millis(3));
            h.snapshot()
        };
        let d = later.since(&s);
        assert_eq!(d.count(), 1);
        assert_eq!(d.sum_ns, 3_000_000);
        assert!((s.sum_seconds() - 20.00306).abs() < 1e-9);
    }
}
