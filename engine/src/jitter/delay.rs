//! Arrival-delay statistics for the jitter buffer: the relative-delay histogram that sets the
//! target delay (after WebRTC NetEq's delay manager) and RFC 3550 interarrival jitter.
//!
//! Every in-sequence frame gives a *transit* value `x = arrival − slot·20 ms`, in nanoseconds
//! since the first arrival: when the frame arrived compared with when it would have arrived on the
//! sender's steady 20 ms schedule. The *reference* is the smallest transit seen in the last one to
//! two seconds (two rotating one-second windows), i.e. the fastest recent frame; the *relative
//! delay* of a frame is `x − reference ≥ 0`. Forgetting old minima lets the reference follow a
//! slow clock drift between Twilio and us.
//!
//! Relative delays go into a histogram of 10 ms buckets up to the maximum delay (the last bucket
//! collects everything above). On every update each bucket is multiplied by the forget factor
//! (0.983 by default, per frame: a sample's weight halves after about 40 frames, 0.8 s) and the
//! new sample's bucket gains `1 − forget`, so the masses always sum to 1. The estimate is the
//! upper edge of the bucket holding the configured quantile (0.95), so a frame as late as that
//! quantile still arrives before its deadline. The histogram starts with all its mass at the
//! configured initial delay, so the estimate grows within a few frames when arrivals are later
//! than that and decays towards the measured quantile over about 3.5 s (0.983^175 ≈ 0.05) when
//! they are earlier. The target is the estimate clamped to `[min_delay, max_delay]`.
//!
//! Updates cost one pass over at most 101 buckets: no allocation after construction.

use std::time::Duration;

/// Width of one histogram bucket.
pub(super) const BUCKET: Duration = Duration::from_millis(10);
const BUCKET_NS: u64 = BUCKET.as_nanos() as u64;

/// Length of one reference window (the reference covers the current and the previous window).
const REFERENCE_WINDOW_NS: u64 = 1_000_000_000;

/// Delay histogram, reference tracking and interarrival jitter.
#[derive(Debug)]
pub(super) struct DelayEstimator {
    /// Probability mass per 10 ms bucket of relative delay; sums to 1.
    buckets: Box<[f64]>,
    /// Quantile of relative delay the target covers (0..1).
    quantile: f64,
    /// Per-update multiplier applied to old mass (0..1).
    forget: f64,
    /// Lower clamp of the target, ns.
    min_delay_ns: u64,
    /// Upper clamp of the target, ns.
    max_delay_ns: u64,
    /// Smallest transit in the current window, ns since the first arrival (`i64::MAX` = none).
    current_min: i64,
    /// Smallest transit in the previous window, ns (`i64::MAX` = none).
    previous_min: i64,
    /// Start of the current window, ns since the first arrival.
    window_start_ns: u64,
    /// Transit of the previous in-sequence frame, ns, for RFC 3550 jitter.
    last_transit: Option<i64>,
    /// RFC 3550 interarrival jitter estimate, ns.
    jitter_ns: f64,
    /// Unclamped quantile estimate (upper bucket edge), ns.
    estimate_ns: u64,
    /// Target delay: the estimate clamped to `[min, max]`, ns.
    target_ns: u64,
}

impl DelayEstimator {
    /// An estimator whose prior is `initial`. Delays are assumed validated
    /// (`min <= initial <= max`, `max` at most a few seconds), quantile and forget in (0, 1).
    pub(super) fn new(
        initial: Duration,
        min: Duration,
        max: Duration,
        quantile: f64,
        forget: f64,
    ) -> Self {
        let max_delay_ns = duration_ns(max);
        let count = max_delay_ns.div_ceil(BUCKET_NS) as usize + 1;
        let mut buckets = vec![0.0; count].into_boxed_slice();
        let prior = (duration_ns(initial).div_ceil(BUCKET_NS) as usize)
            .saturating_sub(1)
            .min(count - 1);
        buckets[prior] = 1.0;
        let mut estimator = Self {
            buckets,
            quantile,
            forget,
            min_delay_ns: duration_ns(min),
            max_delay_ns,
            current_min: i64::MAX,
            previous_min: i64::MAX,
            window_start_ns: 0,
            last_transit: None,
            jitter_ns: 0.0,
            estimate_ns: 0,
            target_ns: 0,
        };
        estimator.update_target();
        estimator
    }

    /// The fastest recent transit, ns since the first arrival; `None` before any observation.
    pub(super) fn reference(&self) -> Option<i64> {
        let r = self.current_min.min(self.previous_min);
        (r != i64::MAX).then_some(r)
    }

    /// Records one in-sequence frame that arrived at `now_ns` with transit `transit` (both ns
    /// since the first arrival). `continuous` is false right after a resync, when the
    /// difference to the previous transit means nothing.
    pub(super) fn observe(&mut self, now_ns: u64, transit: i64, continuous: bool) {
        if now_ns.saturating_sub(self.window_start_ns) >= REFERENCE_WINDOW_NS {
            self.previous_min = self.current_min;
            self.current_min = i64::MAX;
            self.window_start_ns = now_ns;
        }
        self.current_min = self.current_min.min(transit);
        let reference = self.current_min.min(self.previous_min);
        let relative = u64::try_from(transit.saturating_sub(reference)).unwrap_or(0);
        let last = self.buckets.len() - 1;
        let bucket = usize::try_from(relative / BUCKET_NS).map_or(last, |b| b.min(last));
        for mass in self.buckets.iter_mut() {
            *mass *= self.forget;
        }
        self.buckets[bucket] += 1.0 - self.forget;
        self.update_target();

        if let (true, Some(previous)) = (continuous, self.last_transit) {
            let d = transit.saturating_sub(previous).unsigned_abs() as f64;
            self.jitter_ns += (d - self.jitter_ns) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    fn update_target(&mut self) {
        let total: f64 = self.buckets.iter().sum();
        let threshold = self.quantile * total;
        let mut cumulative = 0.0;
        let mut index = self.buckets.len() - 1;
        for (i, mass) in self.buckets.iter().enumerate() {
            cumulative += mass;
            if cumulative >= threshold {
                index = i;
                break;
            }
        }
        self.estimate_ns = (index as u64 + 1) * BUCKET_NS;
        self.target_ns = self
            .estimate_ns
            .clamp(self.min_delay_ns, self.max_delay_ns.max(self.min_delay_ns));
    }

    /// Target delay, ns.
    pub(super) fn target_ns(&self) -> u64 {
        self.target_ns
    }

    /// Unclamped quantile estimate of relative delay.
    pub(super) fn estimate(&self) -> Duration {
        Duration::from_nanos(self.estimate_ns)
    }

    /// RFC 3550 interarrival jitter.
    pub(super) fn jitter(&self) -> Duration {
        Duration::from_nanos(self.jitter_ns as u64)
    }
}

/// A duration in whole nanoseconds, saturating at `u64::MAX` (584 years).
pub(super) fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;

    fn estimator() -> DelayEstimator {
        DelayEstimator::new(
            Duration::from_millis(40),
            Duration::from_millis(20),
            Duration::from_millis(200),
            0.95,
            0.983,
        )
    }

    #[test]
    fn target_starts_at_initial_delay() {
        let e = estimator();
        assert_eq!(e.target_ns(), 40 * MS as u64);
        assert_eq!(e.reference(), None);
    }

    #[test]
    fn steady_arrivals_decay_target_to_min_delay() {
        let mut e = estimator();
        for k in 0..400u64 {
            e.observe(k * 20 * MS as u64, 0, true);
        }
        assert_eq!(e.target_ns(), 20 * MS as u64);
        assert_eq!(e.estimate(), Duration::from_millis(10));
        assert_eq!(e.jitter(), Duration::ZERO);
    }

    #[test]
    fn late_tail_raises_target_to_cover_the_quantile() {
        let mut e = estimator();
        // One frame in five arrives 85 ms after the fastest: 20 % of the mass, above the 5 % tail.
        for k in 0..400u64 {
            let transit = if k % 5 == 0 { 85 * MS } else { 0 };
            e.observe(k * 20 * MS as u64, transit, true);
        }
        assert_eq!(e.target_ns(), 90 * MS as u64);
        assert!(e.jitter() > Duration::from_millis(10));
    }

    #[test]
    fn target_is_clamped_to_max_delay_and_huge_delays_land_in_last_bucket() {
        let mut e = estimator();
        e.observe(0, 0, true);
        for k in 1..200u64 {
            e.observe(k * 20 * MS as u64, i64::MAX / 2, true);
        }
        assert_eq!(e.target_ns(), 200 * MS as u64);
        assert_eq!(e.estimate(), Duration::from_millis(210));
    }

    #[test]
    fn reference_forgets_minima_older_than_two_windows() {
        let mut e = estimator();
        e.observe(0, -50 * MS, true);
        e.observe(500 * MS as u64, 0, true);
        assert_eq!(e.reference(), Some(-50 * MS));
        e.observe(1_100 * MS as u64, 0, true);
        assert_eq!(
            e.reference(),
            Some(-50 * MS),
            "previous window still remembered"
        );
        e.observe(2_200 * MS as u64, 5 * MS, true);
        assert_eq!(e.reference(), Some(0));
    }
}
