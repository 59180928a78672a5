//! Whole Twilio-emulating calls through the simulator's client, and what the simulated caller
//! heard and received in them.

use std::sync::Arc;
use std::time::Duration;

use handset_sim::CallOutcome;

use super::{TOKEN, TestServer, stream_target, twilio_sign};

/// A whole Twilio-emulating call `n` (the simulator's client: real-time caller audio, every
/// server message checked for its exact shape and played through the playback model), with
/// the webhook and the handshake signed by [`twilio_sign`].
pub async fn twilio_call(
    server: &TestServer,
    n: u32,
    audio: Arc<Vec<i16>>,
    duration: Duration,
) -> CallOutcome {
    let target = stream_target(server, n).await;
    let mut plan = server.plan(n);
    plan.forge_signature = Some(twilio_sign(TOKEN, &target.url, &[]));
    plan.audio = audio;
    plan.duration = duration;
    handset_sim::run_stream(&plan, &target)
        .await
        .expect("stream runs")
}

/// The µ-law the simulated Twilio played, in order, with 0x7F normalised to 0xFF (both are
/// zero).
pub fn played_bytes(outcome: &CallOutcome) -> Vec<u8> {
    let norm = |b: u8| if b == 0x7F { 0xFF } else { b };
    outcome
        .played
        .iter()
        .flat_map(|(_, b)| b.iter().copied().map(norm))
        .collect()
}

/// The PCM the simulated caller heard between `from` and `to` (stream time).
pub fn heard_between(outcome: &CallOutcome, from: Duration, to: Duration) -> Vec<i16> {
    let mut pcm = Vec::new();
    for (start, bytes) in &outcome.played {
        for (i, b) in bytes.iter().enumerate() {
            let t = *start + Duration::from_micros(i as u64 * 125);
            if t >= from && t < to {
                pcm.push(handset_engine::codec::decode_sample(*b));
            }
        }
    }
    pcm
}

/// When (stream time) each `clear` reached the simulated caller.
pub fn clears_at(outcome: &CallOutcome) -> Vec<Duration> {
    outcome
        .received
        .iter()
        .filter(|r| r.kind == handset_sim::ReceivedKind::Clear)
        .map(|r| r.at)
        .collect()
}
