//! The simulator's only clock read.
//!
//! `clippy.toml` bans `Instant::now` across the workspace so the engine stays sans-IO; the
//! simulator measures real sockets at real time, and reads the clock only here.
#![allow(clippy::disallowed_methods)]

use std::time::Instant;

/// Monotonic now.
pub(crate) fn now() -> Instant {
    Instant::now()
}
