//! A fixed-bucket latency histogram recorded with relaxed atomics, for the engine's shared
//! counters.
//!
//! Why: the engine workers measure per-frame and per-barge-in timings on their hot path, where
//! nothing may lock or allocate, while the shell reads them at scrape time from another thread.
//! A fixed array of `AtomicU64` bucket counters (plus a sum) does both: recording is a short
//! linear scan over at most [`MAX_BUCKETS`] bounds and two `fetch_add`s; reading is a snapshot of
//! plain numbers the shell turns into its exposition format.
//!
//! Assumptions: bounds are upper bounds (a value equal to a bound falls in that bucket, like
//! Prometheus `le`), strictly increasing, at most [`MAX_BUCKETS`]; one more bucket counts
//! everything above the last bound. A snapshot taken while workers record is not atomic as a
//! whole: each bucket is exact, and the count is the sum of the buckets it read, so
//! `count == Σ buckets` always holds; the sum may include a value whose bucket was read before
//! it landed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Most finite buckets a histogram can have (one more counts values above the last bound).
pub const MAX_BUCKETS: usize = 16;

/// Bucket upper bounds of [`EngineCounters::outbound_lateness`](super::EngineCounters): how late
/// an outbound frame left after it was due, 0.1 ms to 50 ms.
pub const OUTBOUND_LATENESS_BOUNDS: [Duration; 9] = [
    Duration::from_micros(100),
    Duration::from_micros(250),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_millis(2),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(20),
    Duration::from_millis(50),
];

/// Bucket upper bounds of [`EngineCounters::barge_in_latency`](super::EngineCounters): caller
/// speech onset arrival to `clear`, 5 ms to 3 s. The VAD reads ahead of the jitter buffer, so
/// most barge-ins land within a few frames of the onset's arrival: the low end is fine-grained.
pub const BARGE_IN_LATENCY_BOUNDS: [Duration; 15] = [
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(20),
    Duration::from_millis(30),
    Duration::from_millis(50),
    Duration::from_millis(75),
    Duration::from_millis(100),
    Duration::from_millis(150),
    Duration::from_millis(200),
    Duration::from_millis(300),
    Duration::from_millis(500),
    Duration::from_millis(750),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(3),
];

/// A latency histogram with fixed bounds and atomic bucket counters. Recording never locks or
/// allocates.
#[derive(Debug)]
pub struct AtomicHistogram {
    /// Finite upper bounds, increasing; at most [`MAX_BUCKETS`] are used.
    bounds: &'static [Duration],
    /// Per-bucket counts (not cumulative); index `bounds.len()` counts values above every bound.
    counts: [AtomicU64; MAX_BUCKETS + 1],
    /// Sum of every recorded value, in nanoseconds (saturating at about 584 years).
    sum_ns: AtomicU64,
}

/// A histogram's numbers at one moment. Plain data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Finite upper bounds, increasing.
    pub bounds: &'static [Duration],
    /// Per-bucket counts, not cumulative: `counts[i]` counts values in
    /// `(bounds[i - 1], bounds[i]]`, and `counts[bounds.len()]` values above the last bound.
    /// Entries past `bounds.len()` are zero.
    pub counts: [u64; MAX_BUCKETS + 1],
    /// Sum of the recorded values.
    pub sum: Duration,
    /// Number of recorded values (the sum of `counts`).
    pub count: u64,
}

impl AtomicHistogram {
    /// An empty histogram. Bounds beyond [`MAX_BUCKETS`] are ignored (values above the last
    /// kept bound land in the overflow bucket); bounds must be increasing.
    pub fn new(bounds: &'static [Duration]) -> Self {
        let bounds = &bounds[..bounds.len().min(MAX_BUCKETS)];
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds increase");
        Self {
            bounds,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Counts one value. Lock-free: a scan over the bounds and two relaxed `fetch_add`s.
    pub fn record(&self, value: Duration) {
        let bucket = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The bucket upper bounds.
    pub fn bounds(&self) -> &'static [Duration] {
        self.bounds
    }

    /// The counts now (see the module docs for consistency under concurrent recording).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut counts = [0; MAX_BUCKETS + 1];
        for (out, count) in counts.iter_mut().zip(&self.counts) {
            *out = count.load(Ordering::Relaxed);
        }
        HistogramSnapshot {
            bounds: self.bounds,
            counts,
            sum: Duration::from_nanos(self.sum_ns.load(Ordering::Relaxed)),
            count: counts.iter().sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn values_land_in_the_first_bucket_whose_bound_they_do_not_exceed() {
        static BOUNDS: [Duration; 3] = [
            Duration::from_millis(1),
            Duration::from_millis(5),
            Duration::from_millis(10),
        ];
        let h = AtomicHistogram::new(&BOUNDS);
        for v in [0, 1, 2, 5, 6, 10, 11, 1_000] {
            h.record(ms(v));
        }
        let s = h.snapshot();
        assert_eq!(&s.counts[..4], &[2, 2, 2, 2]);
        assert!(s.counts[4..].iter().all(|&c| c == 0));
        assert_eq!(s.count, 8);
        assert_eq!(s.sum, ms(1_035));
        assert_eq!(s.bounds, &BOUNDS[..]);
    }

    #[test]
    fn the_engine_bounds_increase_and_fit() {
        for bounds in [&OUTBOUND_LATENESS_BOUNDS[..], &BARGE_IN_LATENCY_BOUNDS[..]] {
            assert!(bounds.len() <= MAX_BUCKETS);
            assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn concurrent_recording_loses_nothing() {
        let h = AtomicHistogram::new(&OUTBOUND_LATENESS_BOUNDS);
        #[allow(clippy::disallowed_methods)] // the test needs real threads to race
        std::thread::scope(|scope| {
            for t in 0..4u64 {
                let h = &h;
                scope.spawn(move || {
                    for i in 0..10_000u64 {
                        h.record(Duration::from_micros((i * 7 + t) % 60_000));
                    }
                });
            }
        });
        assert_eq!(h.snapshot().count, 40_000);
    }

    proptest! {
        #[test]
        fn snapshot_counts_match_a_reference_bucketing(values in proptest::collection::vec(0u64..100_000_000, 0..200)) {
            let h = AtomicHistogram::new(&BARGE_IN_LATENCY_BOUNDS);
            let mut expected = [0u64; MAX_BUCKETS + 1];
            for &v in &values {
                let d = Duration::from_nanos(v * 40);
                h.record(d);
                let i = BARGE_IN_LATENCY_BOUNDS.iter().filter(|b| **b < d).count();
                expected[i] += 1;
            }
            let s = h.snapshot();
            prop_assert_eq!(s.counts, expected);
            prop_assert_eq!(s.count, values.len() as u64);
            prop_assert_eq!(s.sum, Duration::from_nanos(values.iter().map(|v| v * 40).sum()));
        }
    }
}
