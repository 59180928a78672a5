//! Media time and sample rates.
//!
//! The engine counts media time in samples and takes wall time only as an [`Instant`] argument.
//! Nothing in this crate outside `driver/` reads a clock.
//!
//! [`Instant`]: std::time::Instant

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

/// Twilio's frame cadence: one µ-law frame every 20 ms.
pub const FRAME: Duration = Duration::from_millis(20);

/// Samples in one 20 ms frame at 8 kHz (the Twilio leg).
pub const FRAME_SAMPLES: usize = 160;

/// Samples in one 20 ms frame at 16 kHz (the agent feed).
pub const WIDEBAND_FRAME_SAMPLES: usize = 320;

/// An audio sample rate in Hz; never zero.
#[derive(Clone, Copy, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct SampleRate(NonZeroU32);

impl SampleRate {
    /// 8 kHz: Twilio's µ-law leg.
    pub const NARROWBAND: Self = Self::new_const(8_000);
    /// 16 kHz: the agent feed.
    pub const WIDEBAND: Self = Self::new_const(16_000);
    /// 22.05 kHz (espeak-ng and many TTS engines).
    pub const HZ_22050: Self = Self::new_const(22_050);
    /// 24 kHz (OpenAI and many neural TTS engines).
    pub const HZ_24000: Self = Self::new_const(24_000);
    /// 44.1 kHz.
    pub const HZ_44100: Self = Self::new_const(44_100);
    /// 48 kHz.
    pub const HZ_48000: Self = Self::new_const(48_000);

    /// Every rate the engine accepts for agent audio.
    pub const SUPPORTED: [Self; 6] = [
        Self::NARROWBAND,
        Self::WIDEBAND,
        Self::HZ_22050,
        Self::HZ_24000,
        Self::HZ_44100,
        Self::HZ_48000,
    ];

    const fn new_const(hz: u32) -> Self {
        match NonZeroU32::new(hz) {
            Some(hz) => Self(hz),
            None => panic!("sample rate must be non-zero"),
        }
    }

    /// A rate from Hz, or `None` for zero.
    pub const fn new(hz: u32) -> Option<Self> {
        match NonZeroU32::new(hz) {
            Some(hz) => Some(Self(hz)),
            None => None,
        }
    }

    /// One of [`SampleRate::SUPPORTED`], or `None`.
    pub fn supported(hz: u32) -> Option<Self> {
        Self::SUPPORTED.into_iter().find(|r| r.hz() == hz)
    }

    /// The rate in Hz.
    pub const fn hz(self) -> u32 {
        self.0.get()
    }

    /// Samples in one 20 ms frame at this rate (every supported rate divides evenly).
    pub const fn frame_samples(self) -> usize {
        (self.0.get() / 50) as usize
    }

    /// The duration of `samples` samples at this rate.
    pub const fn duration_of(self, samples: u64) -> Duration {
        let hz = self.0.get() as u64;
        let secs = samples / hz;
        let rem = samples % hz;
        Duration::new(secs, (rem * 1_000_000_000 / hz) as u32)
    }
}

impl fmt::Display for SampleRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} Hz", self.hz())
    }
}

/// A position on the caller's media timeline, in samples at 8 kHz since the stream started.
#[derive(Clone, Copy, Debug, Default, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct SampleTime(pub u64);

impl SampleTime {
    /// The start of the stream.
    pub const ZERO: Self = Self(0);

    /// The position `frames` whole 20 ms frames into the stream.
    pub const fn from_frames(frames: u64) -> Self {
        Self(frames * FRAME_SAMPLES as u64)
    }

    /// The position in whole milliseconds (8 samples per ms).
    pub const fn as_millis(self) -> u64 {
        self.0 / 8
    }

    /// The position as a duration since the stream started.
    pub const fn as_duration(self) -> Duration {
        SampleRate::NARROWBAND.duration_of(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_rate_has_whole_frames() {
        for rate in SampleRate::SUPPORTED {
            assert_eq!(rate.frame_samples() as u32 * 50, rate.hz(), "{rate}");
        }
        assert_eq!(SampleRate::NARROWBAND.frame_samples(), FRAME_SAMPLES);
        assert_eq!(SampleRate::WIDEBAND.frame_samples(), WIDEBAND_FRAME_SAMPLES);
    }

    #[test]
    fn sample_time_converts_to_wall_units() {
        assert_eq!(SampleTime::from_frames(50).as_millis(), 1000);
        assert_eq!(SampleTime(12).as_duration(), Duration::from_micros(1500));
        assert_eq!(SampleRate::supported(22_050), Some(SampleRate::HZ_22050));
        assert_eq!(SampleRate::supported(11_025), None);
    }
}
