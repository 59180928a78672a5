//! Jitter buffer settings and their validation.
//!
//! Plain data with documented units and ranges, validated once by [`JitterConfig::validate`]
//! (which [`JitterBuffer::new`] calls); the buffer then holds only derived, valid values.
//!
//! [`JitterBuffer::new`]: super::JitterBuffer::new

use std::time::Duration;

use super::FRAME_NS;
use super::delay::duration_ns;

/// Largest accepted `max_delay`.
pub const MAX_DELAY_LIMIT: Duration = Duration::from_secs(1);
/// Largest accepted `capacity_frames` (20 s of audio).
pub const CAPACITY_LIMIT: usize = 1000;
/// Largest accepted `max_repeat_frames`.
pub const REPEAT_LIMIT: u32 = 16;
/// Accepted range of `max_jump`.
pub const MAX_JUMP_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(3600));

/// Jitter buffer settings. Validate with [`JitterConfig::validate`] (done by
/// [`JitterBuffer::new`](super::JitterBuffer::new)).
#[derive(Clone, Debug, PartialEq)]
pub struct JitterConfig {
    /// Playout delay before anything is measured: the first frame plays this long after it
    /// arrived. Default 40 ms; 40–60 ms is sensible; must lie in `[min_delay, max_delay]`.
    pub initial_delay: Duration,
    /// Lowest target delay. Default 20 ms (one frame). Lower means less latency and more
    /// concealment under jitter.
    pub min_delay: Duration,
    /// Highest target delay. Default 200 ms; at most [`MAX_DELAY_LIMIT`].
    pub max_delay: Duration,
    /// Most frames buffered at once. Default 50 (1 s); from `ceil(max_delay / 20 ms) + 2` to
    /// [`CAPACITY_LIMIT`]. Memory is allocated for all of them up front (about 192 bytes each:
    /// the frame, its slot and its arrival instant).
    pub capacity_frames: usize,
    /// Consecutive concealed slots that repeat the last frame (fading 6 dB per slot) before
    /// falling to silence. Default 3 (60 ms); 0 conceals with silence only; at most
    /// [`REPEAT_LIMIT`].
    pub max_repeat_frames: u32,
    /// Quantile of relative arrival delay the target covers. Default 0.95 (NetEq); in (0, 1).
    pub quantile: f64,
    /// Histogram forget factor per received frame. Default 0.983 (NetEq); in (0, 1). Higher
    /// remembers longer and adapts more slowly.
    pub forget_factor: f64,
    /// Received slots in a row the playout delay must exceed the target by a frame before one
    /// quiet frame is dropped to shrink it (five times as many for a loud frame). Default 10
    /// (200 ms); at least 1.
    pub accelerate_after_frames: u32,
    /// Consecutive concealed slots with an empty buffer after which the stream is idle rather
    /// than underrunning. Default 10 (200 ms); at least 1.
    pub idle_after_frames: u32,
    /// Largest advance between consecutive frames taken at face value; larger jumps resync.
    /// Default 10 s; within [`MAX_JUMP_RANGE`].
    pub max_jump: Duration,
    /// Consecutive backwards frames rejected before the buffer resyncs to them. Default 10
    /// (200 ms of audio); at least 1.
    pub max_backwards_frames: u32,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(40),
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            capacity_frames: 50,
            max_repeat_frames: 3,
            quantile: 0.95,
            forget_factor: 0.983,
            accelerate_after_frames: 10,
            idle_after_frames: 10,
            max_jump: Duration::from_secs(10),
            max_backwards_frames: 10,
        }
    }
}

impl JitterConfig {
    /// Checks every field against its documented range.
    pub fn validate(&self) -> Result<(), JitterConfigError> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if !(self.min_delay <= self.initial_delay
            && self.initial_delay <= self.max_delay
            && self.max_delay <= MAX_DELAY_LIMIT)
        {
            return Err(JitterConfigError::Delays {
                min_ms: ms(self.min_delay),
                initial_ms: ms(self.initial_delay),
                max_ms: ms(self.max_delay),
                limit_ms: ms(MAX_DELAY_LIMIT),
            });
        }
        let min_capacity = duration_ns(self.max_delay).div_ceil(FRAME_NS) as usize + 2;
        if !(min_capacity..=CAPACITY_LIMIT).contains(&self.capacity_frames) {
            return Err(JitterConfigError::Capacity {
                got: self.capacity_frames,
                min: min_capacity,
                max: CAPACITY_LIMIT,
            });
        }
        if self.max_repeat_frames > REPEAT_LIMIT {
            return Err(JitterConfigError::MaxRepeat {
                got: self.max_repeat_frames,
                max: REPEAT_LIMIT,
            });
        }
        if !(self.quantile > 0.0 && self.quantile < 1.0) {
            return Err(JitterConfigError::Quantile(self.quantile));
        }
        if !(self.forget_factor > 0.0 && self.forget_factor < 1.0) {
            return Err(JitterConfigError::ForgetFactor(self.forget_factor));
        }
        for (field, value) in [
            ("accelerate_after_frames", self.accelerate_after_frames),
            ("idle_after_frames", self.idle_after_frames),
            ("max_backwards_frames", self.max_backwards_frames),
        ] {
            if value == 0 {
                return Err(JitterConfigError::ZeroFrames { field });
            }
        }
        let (lo, hi) = MAX_JUMP_RANGE;
        if !(lo..=hi).contains(&self.max_jump) {
            return Err(JitterConfigError::MaxJump {
                got_ms: ms(self.max_jump),
                min_ms: ms(lo),
                max_ms: ms(hi),
            });
        }
        Ok(())
    }
}

/// Why a [`JitterConfig`] was rejected.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
pub enum JitterConfigError {
    /// `capacity_frames` out of range.
    #[error("capacity must be {min}..={max} frames, got {got}")]
    Capacity {
        /// Configured capacity, frames.
        got: usize,
        /// Smallest allowed: the maximum delay in frames plus 2.
        min: usize,
        /// Largest allowed ([`CAPACITY_LIMIT`]).
        max: usize,
    },
    /// The delays are not ordered `min <= initial <= max <= limit`.
    #[error(
        "delays must satisfy min <= initial <= max <= {limit_ms} ms, got min {min_ms} ms, initial {initial_ms} ms, max {max_ms} ms"
    )]
    Delays {
        /// Configured `min_delay`, ms.
        min_ms: u64,
        /// Configured `initial_delay`, ms.
        initial_ms: u64,
        /// Configured `max_delay`, ms.
        max_ms: u64,
        /// [`MAX_DELAY_LIMIT`], ms.
        limit_ms: u64,
    },
    /// `forget_factor` outside (0, 1).
    #[error("forget factor must be in (0, 1), got {0}")]
    ForgetFactor(f64),
    /// `max_jump` outside [`MAX_JUMP_RANGE`].
    #[error("max jump must be {min_ms}..={max_ms} ms, got {got_ms} ms")]
    MaxJump {
        /// Configured `max_jump`, ms.
        got_ms: u64,
        /// Smallest allowed, ms.
        min_ms: u64,
        /// Largest allowed, ms.
        max_ms: u64,
    },
    /// `max_repeat_frames` above [`REPEAT_LIMIT`].
    #[error("max repeat must be at most {max} frames, got {got}")]
    MaxRepeat {
        /// Configured value, frames.
        got: u32,
        /// Largest allowed, frames.
        max: u32,
    },
    /// `quantile` outside (0, 1).
    #[error("quantile must be in (0, 1), got {0}")]
    Quantile(f64),
    /// A frame count that must be at least 1 is 0.
    #[error("{field} must be at least 1, got 0")]
    ZeroFrames {
        /// Name of the offending field.
        field: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn default_config_is_valid_and_matches_documented_values() {
        let c = JitterConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(
            (c.initial_delay, c.min_delay, c.max_delay),
            (ms(40), ms(20), ms(200))
        );
        assert_eq!((c.capacity_frames, c.max_repeat_frames), (50, 3));
    }

    #[test]
    fn invalid_configs_are_rejected_with_the_numbers_involved() {
        let ok = JitterConfig::default();
        let bad = |f: fn(&mut JitterConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c.validate().err()
        };
        assert_eq!(
            bad(|c| c.initial_delay = ms(10)),
            Some(JitterConfigError::Delays {
                min_ms: 20,
                initial_ms: 10,
                max_ms: 200,
                limit_ms: 1000
            })
        );
        assert!(matches!(
            bad(|c| c.max_delay = ms(2000)),
            Some(JitterConfigError::Delays { .. })
        ));
        let err = bad(|c| c.capacity_frames = 5).unwrap();
        assert_eq!(
            err,
            JitterConfigError::Capacity {
                got: 5,
                min: 12,
                max: CAPACITY_LIMIT
            }
        );
        assert_eq!(err.to_string(), "capacity must be 12..=1000 frames, got 5");
        assert!(matches!(
            bad(|c| c.capacity_frames = 5000),
            Some(JitterConfigError::Capacity { .. })
        ));
        assert_eq!(
            bad(|c| c.max_repeat_frames = 17),
            Some(JitterConfigError::MaxRepeat { got: 17, max: 16 })
        );
        assert!(matches!(
            bad(|c| c.quantile = f64::NAN),
            Some(JitterConfigError::Quantile(_))
        ));
        assert_eq!(
            bad(|c| c.forget_factor = 1.0),
            Some(JitterConfigError::ForgetFactor(1.0))
        );
        assert_eq!(
            bad(|c| c.idle_after_frames = 0),
            Some(JitterConfigError::ZeroFrames {
                field: "idle_after_frames"
            })
        );
        assert_eq!(
            bad(|c| c.max_jump = ms(100)),
            Some(JitterConfigError::MaxJump {
                got_ms: 100,
                min_ms: 1000,
                max_ms: 3_600_000
            })
        );
    }
}
