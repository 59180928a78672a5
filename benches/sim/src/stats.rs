//! Latency statistics for the simulator: a fixed-size histogram with exact count, mean and
//! maximum, and nearest-rank percentiles.
//!
//! Buckets are 10 µs wide up to 20 ms and 1 ms wide up to 2 s; anything above lands in the last
//! bucket (the exact maximum is kept separately). A percentile is reported as the upper edge of
//! the bucket holding the nearest-rank sample, capped at the maximum, so it never understates
//! and overstates by less than one bucket width (10 µs below 20 ms). Recording never allocates:
//! the buckets are allocated once when the histogram is made.

use std::time::Duration;

use serde::Serialize;

/// Width of the fine buckets, µs.
const FINE_US: u64 = 10;
/// Upper end of the fine range, µs.
const FINE_LIMIT_US: u64 = 20_000;
/// Width of the coarse buckets, µs.
const COARSE_US: u64 = 1_000;
/// Upper end of the coarse range, µs.
const COARSE_LIMIT_US: u64 = 2_000_000;
const FINE_BUCKETS: usize = (FINE_LIMIT_US / FINE_US) as usize;
/// The fine buckets, the coarse buckets, and one overflow bucket for everything from
/// [`COARSE_LIMIT_US`] up (its own bucket, so the last coarse bucket keeps its width).
const BUCKETS: usize = FINE_BUCKETS + ((COARSE_LIMIT_US - FINE_LIMIT_US) / COARSE_US) as usize + 1;

/// A histogram of durations with µs resolution.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Box<[u32]>,
    count: u64,
    sum_us: u64,
    max_us: u64,
}

/// Percentiles of a [`Histogram`], in milliseconds (what the report prints).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Samples recorded.
    pub count: u64,
    /// Mean, ms.
    pub mean_ms: f64,
    /// Median (nearest rank), ms.
    pub p50_ms: f64,
    /// 99th percentile (nearest rank), ms.
    pub p99_ms: f64,
    /// Largest sample, ms.
    pub max_ms: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram (allocates its buckets, about 16 KB).
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            sum_us: 0,
            max_us: 0,
        }
    }

    /// Records one sample.
    pub fn record(&mut self, value: Duration) {
        self.record_us(u64::try_from(value.as_micros()).unwrap_or(u64::MAX));
    }

    /// Records one sample given in µs.
    pub fn record_us(&mut self, us: u64) {
        let index = bucket_of(us);
        self.counts[index] = self.counts[index].saturating_add(1);
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.max_us = self.max_us.max(us);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
        self.count += other.count;
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        self.max_us = self.max_us.max(other.max_us);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Largest sample, µs.
    pub fn max_us(&self) -> u64 {
        self.max_us
    }

    /// The nearest-rank `q` quantile (0 < q ≤ 1) in µs: the upper edge of the bucket that
    /// holds it, capped at the maximum; 0 when empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (index, &n) in self.counts.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                return upper_edge(index).min(self.max_us);
            }
        }
        self.max_us
    }

    /// Count, mean, p50, p99 and max in milliseconds.
    pub fn summary(&self) -> Summary {
        let ms = |us: u64| us as f64 / 1000.0;
        Summary {
            count: self.count,
            mean_ms: if self.count == 0 {
                0.0
            } else {
                self.sum_us as f64 / self.count as f64 / 1000.0
            },
            p50_ms: ms(self.quantile_us(0.50)),
            p99_ms: ms(self.quantile_us(0.99)),
            max_ms: ms(self.max_us),
        }
    }

    /// Non-empty buckets as `(lower edge µs, upper edge µs, count)`, for plotting.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64, u32)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (lower_edge(i), upper_edge(i), *n))
    }
}

fn bucket_of(us: u64) -> usize {
    if us < FINE_LIMIT_US {
        (us / FINE_US) as usize
    } else if us < COARSE_LIMIT_US {
        FINE_BUCKETS + ((us - FINE_LIMIT_US) / COARSE_US) as usize
    } else {
        BUCKETS - 1
    }
}

fn lower_edge(index: usize) -> u64 {
    if index < FINE_BUCKETS {
        index as u64 * FINE_US
    } else {
        FINE_LIMIT_US + (index - FINE_BUCKETS) as u64 * COARSE_US
    }
}

fn upper_edge(index: usize) -> u64 {
    if index == BUCKETS - 1 {
        u64::MAX
    } else {
        lower_edge(index + 1)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn exact_nearest_rank(sorted: &[u64], q: f64) -> u64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
        sorted[rank - 1]
    }

    #[test]
    fn empty_histogram_reports_zeros() {
        let h = Histogram::new();
        assert_eq!(h.summary(), Summary::default());
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = Histogram::new();
        for us in 1..=1000u64 {
            h.record_us(us * 10);
        }
        // Values 10, 20, ..., 10_000 µs: p50 is 5_000, p99 is 9_900 (one bucket above at most).
        assert!((5_000..=5_010).contains(&h.quantile_us(0.5)));
        assert!((9_900..=9_910).contains(&h.quantile_us(0.99)));
        assert_eq!(h.max_us(), 10_000);
        assert_eq!(h.quantile_us(1.0), 10_000, "capped at the exact maximum");
        assert!((h.summary().mean_ms - 5.005).abs() < 1e-9);
    }

    #[test]
    fn the_last_coarse_bucket_is_not_the_overflow_bucket() {
        // Found by the property test below: 1.999 s shared the overflow bucket, so its
        // percentile was reported as the largest sample (2.9 s).
        let mut h = Histogram::new();
        for _ in 0..3 {
            h.record_us(1_999_000);
        }
        h.record_us(2_900_000);
        assert_eq!(h.quantile_us(0.5), 2_000_000);
        assert_eq!(h.quantile_us(1.0), 2_900_000);
    }

    #[test]
    fn huge_samples_land_in_the_last_bucket_and_keep_their_maximum() {
        let mut h = Histogram::new();
        h.record(Duration::from_secs(30));
        assert_eq!(h.max_us(), 30_000_000);
        assert_eq!(h.quantile_us(0.5), 30_000_000);
    }

    proptest! {
        #[test]
        fn quantile_never_understates_and_overstates_by_less_than_a_bucket(
            mut values in proptest::collection::vec(0u64..3_000_000, 1..400),
            q in 0.01f64..1.0,
        ) {
            let mut h = Histogram::new();
            for &v in &values {
                h.record_us(v);
            }
            values.sort_unstable();
            let exact = exact_nearest_rank(&values, q);
            let got = h.quantile_us(q);
            prop_assert!(got >= exact, "got {got} < exact {exact}");
            let width = if exact < FINE_LIMIT_US { FINE_US } else if exact < COARSE_LIMIT_US { COARSE_US } else { u64::MAX };
            prop_assert!(got - exact <= width, "got {got}, exact {exact}");
        }

        #[test]
        fn merging_equals_recording_everything_in_one(
            a in proptest::collection::vec(0u64..50_000, 0..100),
            b in proptest::collection::vec(0u64..50_000, 0..100),
        ) {
            let (mut ha, mut hb, mut all) = (Histogram::new(), Histogram::new(), Histogram::new());
            for &v in &a { ha.record_us(v); all.record_us(v); }
            for &v in &b { hb.record_us(v); all.record_us(v); }
            ha.merge(&hb);
            prop_assert_eq!(ha.summary(), all.summary());
        }
    }
}
