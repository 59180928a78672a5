//! The shell's only clock reads.
//!
//! `clippy.toml` bans `Instant::now`/`SystemTime::now` across the workspace so the engine stays
//! sans-IO; the shell is allowed to read clocks, and does so only through these two functions so
//! the exception stays in one place.
#![allow(clippy::disallowed_methods)]

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Monotonic now, for durations and token expiry.
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// Wall-clock milliseconds since the Unix epoch, for stored event timestamps (0 if the clock is
/// before 1970).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
