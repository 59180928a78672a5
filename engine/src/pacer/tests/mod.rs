//! The pacer's unit tests, a module per family of behaviour, and the helpers they share:
//! virtual time from one real instant, frames that carry an id, and draining the pacer with
//! the instant each output left.
//!
//! - [`config`]: the configuration's checks and the queues' capacity;
//! - [`schedule`]: frames released on absolute deadlines (lead, late wake-ups, catch-up
//!   bursts, re-anchoring) and marks in order with them;
//! - [`playback`]: the estimate of Twilio's buffer (underruns, the natural end, idleness);
//! - [`barge_in`]: `flush` (a barge-in's `clear`) and `pause`/`resume` (an onset held for its
//!   check);
//! - [`release_due`]: the deadline each release reports, from which lateness is measured;
//! - [`any_schedule`]: the property test, any schedule checked against independent models
//!   of Twilio's playback.

use super::*;

mod any_schedule;
mod barge_in;
mod config;
mod playback;
mod release_due;
mod schedule;

/// The one real instant the tests need; all later times are virtual offsets from it.
#[allow(clippy::disallowed_methods)]
fn base() -> Instant {
    Instant::now()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A frame whose first bytes carry `id`, so order can be checked on the way out.
fn frame(id: u64) -> MulawFrame {
    let mut bytes = [MULAW_FILL; 160];
    bytes[..8].copy_from_slice(&id.to_le_bytes());
    MulawFrame(bytes)
}

const MULAW_FILL: u8 = 0xFF;

fn id_of(frame: &MulawFrame) -> u64 {
    u64::from_le_bytes(frame.0[..8].try_into().unwrap())
}

/// Drains the pacer, recording each output with the instant it left.
fn drain(pacer: &mut Pacer, now: Instant, out: &mut Vec<(Instant, Transmit)>) {
    while let Some(t) = pacer.poll_transmit() {
        out.push((now, t));
    }
}

fn frame_ids(out: &[(Instant, Transmit)]) -> Vec<u64> {
    out.iter()
        .filter_map(|(_, t)| match t {
            Transmit::Frame { frame, .. } => Some(id_of(frame)),
            Transmit::Mark(_) => None,
        })
        .collect()
}

fn pacer_with(lead: u32, max_burst: u32, reanchor_after: u32) -> Pacer {
    Pacer::new(&PacerConfig {
        lead_frames: lead,
        max_burst,
        reanchor_after,
        ..PacerConfig::default()
    })
    .unwrap()
}
