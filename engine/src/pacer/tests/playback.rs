//! The pacer's estimate of what Twilio still holds: an underrun when the queue starves
//! mid-speech, none at a declared end or when audio resumes in time, and the buffered and idle
//! figures as playback goes on.

use super::*;

/// Sends five frames at `t0` (four at once, one at 20 ms): Twilio's estimate drains at 100 ms.
fn five_frames_sent(pacer: &mut Pacer, t0: Instant) {
    let mut out = Vec::new();
    for id in 0..5 {
        pacer.push_frame(t0, frame(id)).unwrap();
    }
    drain(pacer, t0, &mut out);
    pacer.handle_timeout(t0 + ms(20));
    drain(pacer, t0 + ms(20), &mut out);
    assert_eq!(out.len(), 5);
    assert!(!pacer.is_idle(t0 + ms(99)));
    assert!(pacer.is_idle(t0 + ms(100)));
}

#[test]
fn underrun_is_counted_when_the_queue_starves_mid_speech() {
    let mut pacer = Pacer::new(&PacerConfig::default()).unwrap();
    let t0 = base();
    five_frames_sent(&mut pacer, t0);
    let t1 = t0 + ms(150);
    pacer.push_frame(t1, frame(5)).unwrap();
    assert!(matches!(
        pacer.poll_transmit(),
        Some(Transmit::Frame { seq: 5, .. })
    ));
    assert_eq!(pacer.remote_buffered(t1), ms(20));
    let stats = pacer.stats();
    assert_eq!((stats.underruns, stats.anchors, stats.reanchors), (1, 2, 0));
    assert_eq!(
        stats.late_wakeups, 0,
        "the producer was slow, not the wake-up"
    );
}

#[test]
fn natural_end_is_not_an_underrun() {
    let mut pacer = Pacer::new(&PacerConfig::default()).unwrap();
    let t0 = base();
    five_frames_sent(&mut pacer, t0);
    pacer.end_audio();
    pacer.push_frame(t0 + ms(150), frame(5)).unwrap();
    assert!(pacer.poll_transmit().is_some());
    let stats = pacer.stats();
    assert_eq!((stats.underruns, stats.anchors), (0, 2));
    // The declaration covers one drain only: starving the next audio is an underrun again.
    pacer.push_frame(t0 + ms(300), frame(6)).unwrap();
    assert_eq!(pacer.stats().underruns, 1);
}

#[test]
fn audio_resumed_before_twilio_drains_keeps_the_schedule() {
    let mut pacer = Pacer::new(&PacerConfig::default()).unwrap();
    let t0 = base();
    five_frames_sent(&mut pacer, t0);
    // At 50 ms Twilio still holds 50 ms; frame 5 was due at 40 ms, so it leaves at once.
    pacer.push_frame(t0 + ms(50), frame(5)).unwrap();
    assert!(matches!(
        pacer.poll_transmit(),
        Some(Transmit::Frame { seq: 5, .. })
    ));
    pacer.push_frame(t0 + ms(50), frame(6)).unwrap();
    assert_eq!(pacer.poll_transmit(), None);
    assert_eq!(
        pacer.poll_timeout(),
        Some(t0 + ms(60)),
        "same anchor, no drift"
    );
    let stats = pacer.stats();
    assert_eq!(
        (stats.underruns, stats.anchors, stats.late_wakeups),
        (0, 1, 0)
    );
}

#[test]
fn remote_buffered_tracks_twilio_playback() {
    let mut pacer = Pacer::new(&PacerConfig::default()).unwrap();
    let t0 = base();
    assert_eq!(pacer.remote_buffered(t0), Duration::ZERO);
    assert!(pacer.is_idle(t0));
    for id in 0..5 {
        pacer.push_frame(t0, frame(id)).unwrap();
    }
    assert!(!pacer.is_idle(t0 + ms(500)), "frames still queued locally");
    while pacer.poll_transmit().is_some() {}
    assert_eq!(pacer.remote_buffered(t0), ms(80));
    assert_eq!(pacer.remote_buffered(t0 + ms(50)), ms(30));
    pacer.flush(|_| {});
    pacer.push_mark(MarkId(3)).unwrap();
    assert!(!pacer.is_idle(t0 + ms(500)), "a mark is still queued");
}
