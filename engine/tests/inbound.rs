//! Caller audio through the whole call under seeded impairments: the agent feed stays a steady
//! 20 ms stream, gaps are concealed, duplicates and late frames are counted, and hostile values
//! never panic.

mod common;

use std::time::{Duration, Instant};

use common::{Impair, Sim, ms, seed};
use handset_engine::call::{Call, CallConfig, Input, Output};
use handset_engine::{InboundMedia, MulawFrame};

#[test]
fn bursty_arrivals_become_a_steady_feed() {
    let mut sim = Sim::new(CallConfig::default(), seed(20));
    sim.impair = Impair {
        burst: 5,
        jitter: ms(10),
        ..Impair::default()
    };
    sim.caller_until = Duration::from_secs(60);
    sim.run_for(Duration::from_secs(61));
    let stats = sim.call.stats();
    assert_eq!(stats.media_in, 3000);
    assert_eq!(stats.media_late, 0, "{stats:?}");
    // One 16 kHz frame per 20 ms of caller time: all 60 s of caller audio reached the agent
    // (the feed runs on after the caller stops, with concealed silence).
    assert!(
        sim.caller_audio_frames >= 3000,
        "{} feed frames",
        sim.caller_audio_frames
    );
    // Bursts of 100 ms are absorbed after a short adaptation: gaps concealed while the caller
    // was still sending are few.
    let gap_concealed = stats.jitter.concealed - stats.jitter.idle_concealed;
    assert!(gap_concealed <= 25, "{stats:?}");
    assert!(
        stats.jitter.target_delay >= ms(80),
        "target grew to cover the bursts: {stats:?}"
    );
}

#[test]
fn skipped_chunks_are_concealed_and_duplicates_dropped() {
    let mut sim = Sim::new(CallConfig::default(), seed(21));
    sim.impair = Impair {
        skip: 0.02,
        duplicate: 0.02,
        ..Impair::default()
    };
    sim.run_for(Duration::from_secs(60));
    let stats = sim.call.stats();
    assert!(stats.media_duplicate > 20, "{stats:?}");
    assert!(
        stats.jitter.concealed >= 3000 - stats.media_in - 5,
        "{stats:?}"
    );
    assert_eq!(
        stats.caller_frames, stats.jitter.played,
        "every playout slot reaches the VAD and the feed"
    );
}

#[allow(clippy::disallowed_methods)]
#[test]
fn hostile_media_values_never_panic() {
    let t0 = Instant::now();
    let mut call = Call::new(&CallConfig::default(), t0).unwrap();
    let mut now = t0;
    let values = [
        (1, 0),
        (1, 0),
        (0, 0),
        (u64::MAX, u64::MAX),
        (2, 20),
        (3, 1_000_000_000_000),
        (4, 5),
        (u64::MAX - 1, 3),
        (5, 40),
    ];
    for (chunk, timestamp_ms) in values {
        now += ms(20);
        let media = InboundMedia {
            chunk,
            timestamp_ms,
            payload: MulawFrame([0x55; 160]),
        };
        let _ = call.handle_input(Input::Media(now, media));
        while call.poll_output().is_some() {}
        for _ in 0..200 {
            let Some(t) = call.poll_timeout() else { break };
            let t = t.max(now);
            let _ = call.handle_input(Input::Timeout(t));
            while let Some(out) = call.poll_output() {
                assert!(
                    !matches!(out, Output::Transmit(_)),
                    "no agent audio, nothing to send"
                );
            }
            if t > now + ms(100) {
                break;
            }
        }
    }
    let stats = call.stats();
    assert!(stats.media_duplicate + stats.media_late >= 2, "{stats:?}");
}
