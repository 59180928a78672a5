//! The driver's clock: the only place in the engine that reads time or sleeps.
//!
//! [`SystemClock`] sleeps with `clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)` on an absolute
//! deadline, so a late wake-up never shifts later deadlines (measured, `docs/background.md` §1:
//! ~70–160 µs median lateness, no drift; tokio's 1 ms timer wheel is 1–2 ms late). `std::time::Instant` is
//! `CLOCK_MONOTONIC` on Linux, so deadlines convert exactly through one base pair read at
//! construction.

#![allow(clippy::disallowed_methods)] // this module is the engine's clock

use std::time::{Duration, Instant};

use nix::sys::time::TimeSpec;
use nix::time::{ClockId, ClockNanosleepFlags, clock_gettime, clock_nanosleep};

/// Reads time and sleeps until absolute deadlines.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Instant;
    /// Blocks until `deadline` (returns at once if it has passed).
    fn sleep_until(&self, deadline: Instant);
}

/// The monotonic system clock with absolute-deadline sleeps.
#[derive(Clone, Copy, Debug)]
pub struct SystemClock {
    /// An instant and the same moment on `CLOCK_MONOTONIC`.
    base: Instant,
    base_monotonic: Duration,
}

impl SystemClock {
    /// Reads the base pair.
    pub fn new() -> Self {
        let base = Instant::now();
        let base_monotonic = monotonic();
        Self {
            base,
            base_monotonic,
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, deadline: Instant) {
        let Some(offset) = deadline.checked_duration_since(self.base) else {
            return;
        };
        let target = TimeSpec::from_duration(self.base_monotonic + offset);
        // EINTR: a signal interrupted the sleep; the deadline is absolute, so sleep again.
        while let Err(nix::errno::Errno::EINTR) = clock_nanosleep(
            ClockId::CLOCK_MONOTONIC,
            ClockNanosleepFlags::TIMER_ABSTIME,
            &target,
        ) {}
    }
}

fn monotonic() -> Duration {
    match clock_gettime(ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => Duration::from(ts),
        // CLOCK_MONOTONIC is always present on Linux; fall back to a plain sleep base.
        Err(_) => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_until_an_absolute_deadline_and_not_before() {
        let clock = SystemClock::new();
        let start = clock.now();
        for i in 1..=5u32 {
            let deadline = start + Duration::from_millis(2) * i;
            clock.sleep_until(deadline);
            assert!(clock.now() >= deadline, "woke before deadline {i}");
        }
        // A deadline in the past returns at once.
        clock.sleep_until(start);
    }
}
