use std::collections::{HashMap, VecDeque};

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

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

#[test]
fn default_config_is_valid_and_documented_values_hold() {
    let config = PacerConfig::default();
    assert_eq!(config.lead_frames, 3);
    assert_eq!(config.max_burst, config.lead_frames + 2);
    assert_eq!(config.reanchor_after, config.lead_frames);
    assert!(Pacer::new(&config).is_ok());
    // The module docs state the slot sizes used for the memory estimate.
    assert_eq!(size_of::<QueuedFrame>(), 176);
    assert_eq!(size_of::<QueuedMark>(), 16);
}

#[test]
fn invalid_configs_are_rejected_with_their_numbers() {
    let ok = PacerConfig::default();
    let burst = PacerConfig {
        max_burst: 3,
        ..ok.clone()
    };
    assert_eq!(
        Pacer::new(&burst).unwrap_err(),
        PacerConfigError::BurstBelowLead {
            max_burst: 3,
            needed: 4
        }
    );
    let reanchor = PacerConfig {
        reanchor_after: 2,
        ..ok.clone()
    };
    assert_eq!(
        Pacer::new(&reanchor).unwrap_err(),
        PacerConfigError::ReanchorBeforeLead {
            reanchor_after: 2,
            lead_frames: 3
        }
    );
    let late = PacerConfig {
        late_threshold: FRAME,
        ..ok.clone()
    };
    assert_eq!(
        Pacer::new(&late).unwrap_err(),
        PacerConfigError::LateThresholdTooLarge { threshold: FRAME }
    );
    let empty = PacerConfig {
        capacity_frames: 0,
        ..ok.clone()
    };
    assert_eq!(
        Pacer::new(&empty).unwrap_err(),
        PacerConfigError::ZeroCapacity
    );
    let no_marks = PacerConfig {
        capacity_marks: 0,
        ..ok.clone()
    };
    assert_eq!(
        Pacer::new(&no_marks).unwrap_err(),
        PacerConfigError::ZeroMarkCapacity
    );
    let huge = PacerConfig {
        capacity_frames: usize::MAX / 2,
        ..ok
    };
    assert!(matches!(
        Pacer::new(&huge),
        Err(PacerConfigError::Allocation { .. })
    ));
    assert_eq!(
        PacerConfigError::BurstBelowLead {
            max_burst: 3,
            needed: 4
        }
        .to_string(),
        "max_burst 3 is below lead_frames + 1 = 4"
    );
}

#[test]
fn first_lead_plus_one_frames_leave_at_the_anchor_then_one_per_frame() {
    let mut pacer = Pacer::new(&PacerConfig::default()).unwrap();
    let t0 = base();
    let mut out = Vec::new();
    for id in 0..8 {
        pacer.push_frame(t0, frame(id)).unwrap();
        drain(&mut pacer, t0, &mut out);
    }
    assert_eq!(frame_ids(&out), [0, 1, 2, 3]);
    assert!(out.iter().all(|(t, _)| *t == t0));
    for (i, expected) in (4..8).enumerate() {
        let deadline = pacer.poll_timeout().unwrap();
        assert_eq!(deadline, t0 + ms(20) * (i as u32 + 1));
        // Just before the deadline nothing leaves.
        pacer.handle_timeout(deadline - Duration::from_micros(1));
        assert_eq!(pacer.poll_transmit(), None);
        pacer.handle_timeout(deadline);
        assert_eq!(
            pacer.poll_transmit(),
            Some(Transmit::Frame {
                seq: expected,
                frame: frame(expected)
            })
        );
        assert_eq!(pacer.poll_transmit(), None);
    }
    assert_eq!(pacer.poll_timeout(), None);
    assert_eq!(pacer.stats().frames_sent, 8);
    assert_eq!(pacer.stats().anchors, 1);
}

#[test]
fn ten_virtual_minutes_release_30000_frames_on_schedule_without_drift() {
    const TOTAL: u64 = 30_000;
    let seed = 0x5eed_0001;
    let config = PacerConfig::default();
    let lead = u64::from(config.lead_frames);
    let mut pacer = Pacer::new(&config).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let t0 = base();
    let mut now = t0;
    let mut pushed = 0;
    let mut out = Vec::new();
    let mut worst_drawn = Duration::ZERO;
    let mut stalls = 0;
    loop {
        // Keep audio queued at all times: top up whenever fewer than 100 frames wait.
        while pacer.queued_frames() < 100 && pushed < TOTAL {
            pacer.push_frame(now, frame(pushed)).unwrap();
            pushed += 1;
            drain(&mut pacer, now, &mut out);
        }
        let Some(deadline) = pacer.poll_timeout() else {
            break;
        };
        let late = if rng.gen_ratio(1, 400) {
            stalls += 1;
            ms(50) + Duration::from_micros(rng.gen_range(0..=5_000))
        } else {
            Duration::from_micros(rng.gen_range(0..=5_000))
        };
        worst_drawn = worst_drawn.max(late);
        now = deadline.max(now) + late;
        pacer.handle_timeout(now);
        drain(&mut pacer, now, &mut out);
    }
    assert!(stalls > 10, "seed {seed:#x}: only {stalls} stalls drawn");
    assert_eq!(out.len(), TOTAL as usize, "seed {seed:#x}");
    let mut per_wakeup: HashMap<Instant, u32> = HashMap::new();
    for (n, (t, transmit)) in out.iter().enumerate() {
        let n = n as u64;
        let Transmit::Frame { seq, frame } = transmit else {
            panic!("no marks were pushed")
        };
        assert_eq!((*seq, id_of(frame)), (n, n), "seed {seed:#x}");
        let ideal = at(t0, n.saturating_sub(lead));
        assert!(*t >= ideal, "seed {seed:#x}: frame {n} left early");
        assert!(
            *t - ideal <= worst_drawn,
            "seed {seed:#x}: frame {n} late by {:?}",
            *t - ideal
        );
        *per_wakeup.entry(*t).or_default() += 1;
    }
    // Zero cumulative drift: the last frame leaves within one wake-up of its ideal time.
    let (last_at, _) = out[out.len() - 1];
    let ideal_last = at(t0, TOTAL - 1 - lead);
    assert_eq!(ideal_last, t0 + ms(20) * (TOTAL as u32 - 4));
    assert!(
        last_at >= ideal_last && last_at - ideal_last < FRAME,
        "seed {seed:#x}"
    );
    let stats = pacer.stats();
    assert!(
        per_wakeup.values().all(|&n| n <= config.max_burst),
        "seed {seed:#x}"
    );
    assert!(
        per_wakeup.values().filter(|&&n| n > 1).count() > 10,
        "seed {seed:#x}"
    );
    assert_eq!(
        (stats.anchors, stats.reanchors, stats.underruns),
        (1, 0, 0),
        "seed {seed:#x}"
    );
    assert!(stats.catch_up_bursts >= 10 && stats.late_wakeups > stats.catch_up_bursts);
    assert!(stats.max_lateness >= ms(50) && stats.max_lateness <= worst_drawn);
    assert_eq!(stats.frames_sent, TOTAL);
}

#[test]
fn pacer_never_releases_early_after_late_wakeup() {
    let mut pacer = Pacer::new(&PacerConfig::default()).unwrap();
    let t0 = base();
    let mut out = Vec::new();
    for id in 0..20 {
        pacer.push_frame(t0, frame(id)).unwrap();
    }
    drain(&mut pacer, t0, &mut out);
    // Every wake-up is 7 ms late; the next deadline must still come from the anchor.
    while let Some(deadline) = pacer.poll_timeout() {
        let now = deadline + ms(7);
        pacer.handle_timeout(now);
        drain(&mut pacer, now, &mut out);
    }
    assert_eq!(frame_ids(&out), (0..20).collect::<Vec<_>>());
    for (n, (t, _)) in out.iter().enumerate() {
        let deadline = at(t0, (n as u64).saturating_sub(3));
        assert!(*t >= deadline, "frame {n} left before its deadline");
        if n > 3 {
            assert_eq!(
                *t,
                deadline + ms(7),
                "frame {n}: lateness must not accumulate"
            );
        }
    }
    assert_eq!(pacer.stats().late_wakeups, 16);
}

#[test]
fn late_wakeups_are_counted_above_the_threshold_only() {
    let mut pacer = Pacer::new(&PacerConfig::default()).unwrap();
    let t0 = base();
    let mut out = Vec::new();
    for id in 0..6 {
        pacer.push_frame(t0, frame(id)).unwrap();
    }
    drain(&mut pacer, t0, &mut out);
    pacer.handle_timeout(t0 + ms(21));
    drain(&mut pacer, t0 + ms(21), &mut out);
    pacer.handle_timeout(t0 + ms(43));
    drain(&mut pacer, t0 + ms(43), &mut out);
    let stats = pacer.stats();
    assert_eq!(out.len(), 6);
    assert_eq!(stats.wakeups, 3); // the anchor, 1 ms late, 3 ms late
    assert_eq!(stats.late_wakeups, 1);
    assert_eq!(stats.total_lateness, ms(4));
    assert_eq!(stats.max_lateness, ms(3));
    assert_eq!(stats.catch_up_bursts, 0);
}

#[test]
fn catch_up_releases_all_due_frames_in_one_burst() {
    let mut pacer = Pacer::new(&PacerConfig::default()).unwrap();
    let t0 = base();
    let mut out = Vec::new();
    for id in 0..20 {
        pacer.push_frame(t0, frame(id)).unwrap();
    }
    drain(&mut pacer, t0, &mut out);
    // 45 ms late for frame 4 (due at 20 ms): frames 4, 5 and 6 are due at 65 ms.
    pacer.handle_timeout(t0 + ms(65));
    let before = out.len();
    drain(&mut pacer, t0 + ms(65), &mut out);
    assert_eq!(frame_ids(&out[before..]), [4, 5, 6]);
    assert_eq!(pacer.poll_timeout(), Some(t0 + ms(80)));
    assert_eq!(pacer.remote_buffered(t0 + ms(65)), ms(75));
    let stats = pacer.stats();
    assert_eq!(
        (stats.catch_up_bursts, stats.reanchors, stats.anchors),
        (1, 0, 1)
    );
}

#[test]
fn stall_beyond_the_lead_reanchors_and_restores_the_lead() {
    let mut pacer = Pacer::new(&PacerConfig::default()).unwrap();
    let t0 = base();
    let mut out = Vec::new();
    for id in 0..40 {
        pacer.push_frame(t0, frame(id)).unwrap();
    }
    drain(&mut pacer, t0, &mut out);
    for _ in 0..6 {
        let now = pacer.poll_timeout().unwrap();
        pacer.handle_timeout(now);
        drain(&mut pacer, now, &mut out);
    }
    assert_eq!(out.len(), 10);
    // Frame 10 is due at 140 ms; waking at 240 ms finds 6 overdue: Twilio ran dry at 200 ms.
    assert_eq!(pacer.poll_timeout(), Some(t0 + ms(140)));
    assert_eq!(pacer.remote_buffered(t0 + ms(240)), Duration::ZERO);
    let now = t0 + ms(240);
    pacer.handle_timeout(now);
    let before = out.len();
    drain(&mut pacer, now, &mut out);
    assert_eq!(
        frame_ids(&out[before..]),
        [10, 11, 12, 13],
        "lead + 1 at the new anchor"
    );
    assert_eq!(pacer.remote_buffered(now), ms(80));
    assert_eq!(pacer.poll_timeout(), Some(now + ms(20)));
    let stats = pacer.stats();
    assert_eq!((stats.reanchors, stats.anchors, stats.underruns), (1, 2, 0));
    assert_eq!(stats.max_lateness, ms(100));
    assert_eq!(stats.catch_up_bursts, 1);
}

#[test]
fn catch_up_is_capped_by_max_burst_when_reanchor_allows_a_deeper_backlog() {
    let mut pacer = pacer_with(1, 2, 6);
    let t0 = base();
    let mut out = Vec::new();
    for id in 0..20 {
        pacer.push_frame(t0, frame(id)).unwrap();
    }
    drain(&mut pacer, t0, &mut out);
    assert_eq!(out.len(), 2);
    // Frame 2 is due at 20 ms; at 95 ms frames 2..=5 are due but only 2 may leave.
    pacer.handle_timeout(t0 + ms(95));
    drain(&mut pacer, t0 + ms(95), &mut out);
    // Asking again in the same wake-up does not extend the burst.
    pacer.handle_timeout(t0 + ms(95));
    drain(&mut pacer, t0 + ms(95), &mut out);
    assert_eq!(frame_ids(&out), [0, 1, 2, 3]);
    // The rest wait for the next tick of the unchanged schedule.
    assert_eq!(pacer.poll_timeout(), Some(t0 + ms(100)));
    pacer.handle_timeout(t0 + ms(100));
    drain(&mut pacer, t0 + ms(100), &mut out);
    assert_eq!(pacer.poll_timeout(), Some(t0 + ms(120)));
    pacer.handle_timeout(t0 + ms(120));
    drain(&mut pacer, t0 + ms(120), &mut out);
    assert_eq!(frame_ids(&out), (0..8).collect::<Vec<_>>());
    assert_eq!(
        pacer.poll_timeout(),
        Some(t0 + ms(140)),
        "caught up, schedule intact"
    );
    for (n, (t, _)) in out.iter().enumerate() {
        assert!(
            *t >= at(t0, (n as u64).saturating_sub(1)),
            "frame {n} left early"
        );
    }
    let stats = pacer.stats();
    assert_eq!(
        (stats.capped_bursts, stats.reanchors, stats.anchors),
        (2, 0, 1)
    );
}

#[test]
fn marks_leave_right_after_the_last_frame_before_them() {
    let mut pacer = Pacer::new(&PacerConfig::default()).unwrap();
    let t0 = base();
    let mut out = Vec::new();
    for id in 0..6 {
        pacer.push_frame(t0, frame(id)).unwrap();
    }
    pacer.push_mark(MarkId(1)).unwrap();
    pacer.push_frame(t0, frame(6)).unwrap();
    pacer.push_mark(MarkId(2)).unwrap();
    drain(&mut pacer, t0, &mut out);
    while let Some(now) = pacer.poll_timeout() {
        pacer.handle_timeout(now);
        drain(&mut pacer, now, &mut out);
    }
    let shape: Vec<_> = out
        .iter()
        .map(|(t, x)| {
            let at_ms = (*t - t0).as_millis() as u64;
            match x {
                Transmit::Frame { frame, .. } => (at_ms, 'f', id_of(frame)),
                Transmit::Mark(MarkId(m)) => (at_ms, 'm', *m),
            }
        })
        .collect();
    assert_eq!(
        shape,
        [
            (0, 'f', 0),
            (0, 'f', 1),
            (0, 'f', 2),
            (0, 'f', 3),
            (20, 'f', 4),
            (40, 'f', 5),
            (40, 'm', 1),
            (60, 'f', 6),
            (60, 'm', 2),
        ]
    );
    assert_eq!(pacer.stats().marks_sent, 2);
}

#[test]
fn mark_with_nothing_before_it_leaves_immediately() {
    let mut pacer = Pacer::new(&PacerConfig::default()).unwrap();
    pacer.push_mark(MarkId(9)).unwrap();
    assert_eq!(pacer.poll_transmit(), Some(Transmit::Mark(MarkId(9))));
    assert_eq!(pacer.poll_transmit(), None);
    // Also when earlier frames are all sent but still playing at Twilio.
    let t0 = base();
    pacer.push_frame(t0, frame(0)).unwrap();
    assert!(matches!(
        pacer.poll_transmit(),
        Some(Transmit::Frame { seq: 0, .. })
    ));
    pacer.push_mark(MarkId(10)).unwrap();
    assert_eq!(pacer.poll_transmit(), Some(Transmit::Mark(MarkId(10))));
    assert_eq!(pacer.queued_marks(), 0);
}

#[test]
fn flush_drops_everything_counts_it_and_restarts_the_schedule() {
    let mut pacer = Pacer::new(&PacerConfig::default()).unwrap();
    let t0 = base();
    let mut out = Vec::new();
    for id in 0..6 {
        pacer.push_frame(t0, frame(id)).unwrap();
    }
    pacer.push_mark(MarkId(1)).unwrap();
    for id in 6..10 {
        pacer.push_frame(t0, frame(id)).unwrap();
    }
    pacer.push_mark(MarkId(2)).unwrap();
    drain(&mut pacer, t0, &mut out);
    assert_eq!(out.len(), 4);
    let mut dropped_marks = Vec::new();
    let flushed = pacer.flush(|m| dropped_marks.push(m));
    assert_eq!(
        flushed,
        Flushed {
            frames: 6,
            marks: 2
        }
    );
    assert_eq!(dropped_marks, [MarkId(1), MarkId(2)]);
    assert_eq!((pacer.queued_frames(), pacer.queued_marks()), (0, 0));
    assert_eq!(pacer.poll_timeout(), None);
    assert_eq!(pacer.poll_transmit(), None);
    // Twilio's buffer is cleared too, so the estimate is empty at once.
    assert_eq!(pacer.remote_buffered(t0 + ms(1)), Duration::ZERO);
    assert!(pacer.is_idle(t0 + ms(1)));
    // New audio starts a new anchor with the full lead, and seq keeps counting.
    let t1 = t0 + ms(10);
    for id in 100..106 {
        pacer.push_frame(t1, frame(id)).unwrap();
    }
    let before = out.len();
    drain(&mut pacer, t1, &mut out);
    assert_eq!(frame_ids(&out[before..]), [100, 101, 102, 103]);
    assert!(matches!(out[before].1, Transmit::Frame { seq: 4, .. }));
    assert_eq!(pacer.poll_timeout(), Some(t1 + ms(20)));
    let stats = pacer.stats();
    assert_eq!(
        (stats.flushes, stats.frames_flushed, stats.marks_flushed),
        (1, 6, 2)
    );
    assert_eq!((stats.anchors, stats.underruns), (2, 0));
}

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

#[test]
fn pushing_beyond_capacity_is_an_error_and_changes_nothing() {
    let config = PacerConfig {
        capacity_frames: 4,
        capacity_marks: 1,
        ..PacerConfig::default()
    };
    let mut pacer = Pacer::new(&config).unwrap();
    let t0 = base();
    for id in 0..4 {
        pacer.push_frame(t0, frame(id)).unwrap();
    }
    assert_eq!(
        pacer.push_frame(t0, frame(4)),
        Err(PacerError::QueueFull { capacity: 4 })
    );
    assert_eq!(pacer.queued_frames(), 4);
    assert_eq!(
        pacer.poll_timeout(),
        Some(t0),
        "released frames wait to be polled"
    );
    pacer.push_mark(MarkId(1)).unwrap();
    assert_eq!(
        pacer.push_mark(MarkId(2)),
        Err(PacerError::MarkQueueFull { capacity: 1 })
    );
    assert_eq!(
        PacerError::QueueFull { capacity: 4 }.to_string(),
        "pacer queue full: 4 frames queued"
    );
    let mut out = Vec::new();
    drain(&mut pacer, t0, &mut out);
    assert_eq!(frame_ids(&out), [0, 1, 2, 3]);
    assert_eq!(out.len(), 5);
    // Space is free again once frames leave.
    pacer.push_frame(t0, frame(4)).unwrap();
    pacer.push_mark(MarkId(2)).unwrap();
}

#[test]
fn earlier_now_is_treated_as_the_latest_now() {
    let mut pacer = Pacer::new(&PacerConfig::default()).unwrap();
    let t0 = base() + ms(1_000);
    for id in 0..6 {
        pacer.push_frame(t0, frame(id)).unwrap();
    }
    while pacer.poll_transmit().is_some() {}
    pacer.handle_timeout(t0 - ms(500));
    assert_eq!(pacer.poll_transmit(), None);
    assert_eq!(pacer.poll_timeout(), Some(t0 + ms(20)));
}

#[test]
fn a_long_pause_holds_the_queue_then_starts_a_new_schedule_without_counting_anything() {
    let mut pacer = Pacer::new(&PacerConfig::default()).unwrap();
    let t0 = base();
    let mut out = Vec::new();
    for id in 0..10 {
        pacer.push_frame(t0, frame(id)).unwrap();
    }
    pacer.push_mark(MarkId(1)).unwrap();
    drain(&mut pacer, t0, &mut out);
    assert_eq!(frame_ids(&out), [0, 1, 2, 3]);
    pacer.pause(t0 + ms(10));
    assert!(pacer.is_paused());
    assert_eq!(
        pacer.poll_timeout(),
        None,
        "a paused pacer needs no wake-up"
    );
    // Time passes; wake-ups and pushes release nothing.
    for t in [20, 40, 200, 300] {
        pacer.handle_timeout(t0 + ms(t));
        pacer.push_frame(t0 + ms(t), frame(10 + t)).unwrap();
        assert_eq!(pacer.poll_transmit(), None);
    }
    assert!(pacer.remote_buffered(t0 + ms(300)).is_zero());
    // A mark placed at the resume point leaves first, then a fresh lead at the resume instant.
    let t1 = t0 + ms(310);
    pacer.push_mark_next(MarkId(9)).unwrap();
    pacer.resume(t1);
    assert!(!pacer.is_paused());
    let mut resumed = Vec::new();
    drain(&mut pacer, t1, &mut resumed);
    assert_eq!(resumed[0].1, Transmit::Mark(MarkId(9)));
    assert_eq!(frame_ids(&resumed), [4, 5, 6, 7]);
    assert_eq!(pacer.poll_timeout(), Some(t1 + ms(20)));
    let stats = pacer.stats();
    assert_eq!(
        (
            stats.anchors,
            stats.underruns,
            stats.reanchors,
            stats.late_wakeups
        ),
        (2, 0, 0, 0),
        "a pause is neither an underrun nor a late wake-up"
    );
    // The rest follow in order, mark 1 right after frame 9, then the frames pushed while paused.
    while let Some(deadline) = pacer.poll_timeout() {
        pacer.handle_timeout(deadline);
        drain(&mut pacer, deadline, &mut resumed);
    }
    let ids = frame_ids(&resumed);
    assert_eq!(ids, [4, 5, 6, 7, 8, 9, 30, 50, 210, 310]);
    let mark_1 = resumed
        .iter()
        .position(|(_, t)| *t == Transmit::Mark(MarkId(1)))
        .unwrap();
    assert!(matches!(resumed[mark_1 - 1].1, Transmit::Frame { frame, .. } if id_of(&frame) == 9));
    assert_eq!(pacer.stats().late_wakeups, 0);
}

#[test]
fn a_short_pause_keeps_the_schedule_and_only_restores_the_lead() {
    let mut pacer = Pacer::new(&PacerConfig::default()).unwrap();
    let t0 = base();
    let mut out = Vec::new();
    for id in 0..10 {
        pacer.push_frame(t0, frame(id)).unwrap();
    }
    drain(&mut pacer, t0, &mut out);
    pacer.pause(t0 + ms(5));
    pacer.handle_timeout(t0 + ms(20));
    assert_eq!(pacer.poll_transmit(), None);
    // At 50 ms Twilio still holds 30 ms of the 80 ms sent: frames 4 and 5 (due at 20 and
    // 40 ms) restore the 60 ms lead, on the same anchor.
    let t1 = t0 + ms(50);
    pacer.resume(t1);
    drain(&mut pacer, t1, &mut out);
    assert_eq!(frame_ids(&out), [0, 1, 2, 3, 4, 5]);
    assert_eq!(pacer.remote_buffered(t1), ms(70));
    assert_eq!(pacer.poll_timeout(), Some(t0 + ms(60)), "the same anchor");
    let stats = pacer.stats();
    assert_eq!(
        (stats.anchors, stats.underruns, stats.late_wakeups),
        (1, 0, 0)
    );
}

#[test]
fn flush_ends_a_pause_and_resume_without_a_pause_changes_nothing() {
    let mut pacer = Pacer::new(&PacerConfig::default()).unwrap();
    let t0 = base();
    for id in 0..6 {
        pacer.push_frame(t0, frame(id)).unwrap();
    }
    while pacer.poll_transmit().is_some() {}
    pacer.pause(t0);
    pacer.flush(|_| {});
    assert!(!pacer.is_paused());
    pacer.push_frame(t0 + ms(30), frame(6)).unwrap();
    assert!(
        pacer.poll_transmit().is_some(),
        "new audio after the clear plays"
    );
    let before = pacer.poll_timeout();
    pacer.resume(t0 + ms(31));
    assert_eq!(pacer.poll_timeout(), before);
    assert_eq!(pacer.poll_transmit(), None);
}

#[derive(Clone, Debug)]
enum Op {
    /// Push this many frames now.
    Push(u8),
    /// Push a mark now.
    Mark,
    /// Declare the audio complete.
    End,
    /// Barge-in.
    Flush,
    /// Hold the frames (a caller onset awaiting its check).
    Pause,
    /// Release them again, with a mark at the resume point.
    Resume,
    /// Wake at the pacer's deadline plus this lateness (µs).
    Timer(u32),
    /// Let this much time pass (µs), then wake.
    Wait(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..12).prop_map(Op::Push),
        2 => Just(Op::Mark),
        1 => Just(Op::End),
        1 => Just(Op::Flush),
        1 => Just(Op::Pause),
        1 => Just(Op::Resume),
        6 => prop_oneof![3 => 0u32..6_000, 1 => 0u32..120_000].prop_map(Op::Timer),
        2 => (0u32..150_000).prop_map(Op::Wait),
    ]
}

#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Item {
    Frame(u64),
    Mark(u64),
}

/// Checks one output against independent models of Twilio's playback.
struct Checker {
    lead: Duration,
    exact: bool,
    max_burst: u32,
    /// Pushed, not yet sent or flushed, in push order.
    expected: VecDeque<Item>,
    /// Twilio's playback end if it pauses when starved (exact when `reanchor_after == lead`).
    twilio_end: Option<Instant>,
    /// Playback end if Twilio never paused since the last flush (a lower bound).
    steady_end: Option<Instant>,
    /// Frames sent per (flush epoch, instant).
    bursts: HashMap<(u64, Instant), u32>,
    epoch: u64,
    next_seq: u64,
    paused: bool,
}

impl Checker {
    fn sent(&mut self, now: Instant, transmit: Transmit) -> Result<(), TestCaseError> {
        match transmit {
            Transmit::Frame { seq, frame } => {
                prop_assert!(!self.paused, "a frame left while paused");
                prop_assert_eq!(seq, self.next_seq);
                self.next_seq += 1;
                prop_assert_eq!(self.expected.pop_front(), Some(Item::Frame(id_of(&frame))));
                let buffered = self
                    .twilio_end
                    .map_or(Duration::ZERO, |e| e.saturating_duration_since(now));
                let steady = self
                    .steady_end
                    .map_or(Duration::ZERO, |e| e.saturating_duration_since(now));
                prop_assert!(
                    steady <= self.lead,
                    "early release: steady buffer {:?}",
                    steady
                );
                if self.exact {
                    prop_assert!(
                        buffered <= self.lead,
                        "early release: twilio holds {:?}",
                        buffered
                    );
                }
                self.twilio_end = Some(self.twilio_end.map_or(now, |e| e.max(now)) + FRAME);
                self.steady_end = Some(self.steady_end.unwrap_or(now) + FRAME);
                let burst = self.bursts.entry((self.epoch, now)).or_default();
                *burst += 1;
                prop_assert!(*burst <= self.max_burst, "burst of {} frames", burst);
            }
            Transmit::Mark(MarkId(m)) => {
                prop_assert_eq!(self.expected.pop_front(), Some(Item::Mark(m)));
            }
        }
        Ok(())
    }

    fn drain(&mut self, pacer: &mut Pacer, now: Instant) -> Result<(), TestCaseError> {
        while let Some(t) = pacer.poll_transmit() {
            self.sent(now, t)?;
        }
        if self.paused {
            prop_assert_eq!(pacer.poll_timeout(), None);
        } else if self.exact && pacer.queued_frames() > 0 {
            // Nothing due is held back, and the next deadline is exactly when Twilio's
            // buffer falls to the lead.
            let end = self.twilio_end.unwrap_or(now);
            prop_assert!(
                end.saturating_duration_since(now) > self.lead,
                "due frame held back"
            );
            prop_assert_eq!(pacer.poll_timeout(), Some(end - self.lead));
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn pacer_keeps_schedule_order_and_counts_for_any_schedule(
        lead in 0u32..5,
        extra_burst in 0u32..4,
        extra_reanchor in prop_oneof![2 => Just(0u32), 1 => 0u32..5],
        capacity in 1usize..64,
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let config = PacerConfig {
            lead_frames: lead,
            max_burst: lead + 1 + extra_burst,
            reanchor_after: lead + extra_reanchor,
            capacity_frames: capacity,
            capacity_marks: 8,
            ..PacerConfig::default()
        };
        let mut pacer = Pacer::new(&config).unwrap();
        let mut check = Checker {
            lead: FRAME * lead,
            exact: extra_reanchor == 0,
            max_burst: config.max_burst,
            expected: VecDeque::new(),
            twilio_end: None,
            steady_end: None,
            bursts: HashMap::new(),
            epoch: 0,
            next_seq: 0,
            paused: false,
        };
        let mut now = base();
        let (mut frames_in, mut next_id, mut marks_in) = (0u64, 0u64, 0u64);
        for op in ops {
            match op {
                Op::Push(n) => {
                    for _ in 0..n {
                        let id = next_id;
                        next_id += 1;
                        match pacer.push_frame(now, frame(id)) {
                            Ok(()) => {
                                frames_in += 1;
                                check.expected.push_back(Item::Frame(id));
                            }
                            Err(e) => prop_assert_eq!(e, PacerError::QueueFull { capacity }),
                        }
                        check.drain(&mut pacer, now)?;
                    }
                }
                Op::Mark => {
                    let id = marks_in;
                    if pacer.push_mark(MarkId(id)).is_ok() {
                        marks_in += 1;
                        check.expected.push_back(Item::Mark(id));
                    }
                    check.drain(&mut pacer, now)?;
                }
                Op::End => pacer.end_audio(),
                Op::Flush => {
                    let mut marks = Vec::new();
                    let flushed = pacer.flush(|m| marks.push(Item::Mark(m.0)));
                    let frames = check.expected.iter().filter(|i| matches!(i, Item::Frame(_))).count();
                    let expected_marks: Vec<_> =
                        check.expected.iter().copied().filter(|i| matches!(i, Item::Mark(_))).collect();
                    prop_assert_eq!(flushed, Flushed { frames, marks: expected_marks.len() });
                    prop_assert_eq!(marks, expected_marks);
                    check.expected.clear();
                    check.twilio_end = None;
                    check.steady_end = None;
                    check.epoch += 1;
                    check.paused = false;
                    prop_assert_eq!(pacer.poll_timeout(), None);
                }
                Op::Pause => {
                    pacer.pause(now);
                    check.paused = true;
                    check.drain(&mut pacer, now)?;
                }
                Op::Resume => {
                    if check.paused {
                        let id = marks_in;
                        if pacer.push_mark_next(MarkId(id)).is_ok() {
                            marks_in += 1;
                            check.expected.push_front(Item::Mark(id));
                        }
                    }
                    pacer.resume(now);
                    check.paused = false;
                    check.drain(&mut pacer, now)?;
                }
                Op::Timer(late) => {
                    if let Some(deadline) = pacer.poll_timeout() {
                        now = deadline.max(now) + Duration::from_micros(late.into());
                        pacer.handle_timeout(now);
                        check.drain(&mut pacer, now)?;
                    }
                }
                Op::Wait(us) => {
                    now += Duration::from_micros(us.into());
                    pacer.handle_timeout(now);
                    check.drain(&mut pacer, now)?;
                }
            }
        }
        // Play everything out on time.
        pacer.resume(now);
        check.paused = false;
        check.drain(&mut pacer, now)?;
        while let Some(deadline) = pacer.poll_timeout() {
            now = deadline.max(now);
            pacer.handle_timeout(now);
            check.drain(&mut pacer, now)?;
        }
        prop_assert!(check.expected.is_empty());
        let stats = pacer.stats();
        prop_assert_eq!(stats.frames_sent, frames_in - stats.frames_flushed);
        prop_assert_eq!(stats.marks_sent, marks_in - stats.marks_flushed);
        prop_assert_eq!(stats.frames_sent, check.next_seq);
        prop_assert!(pacer.is_idle(now + FRAME * (lead + 1)));
    }
}

/// Drains the pacer at `now`, returning each released frame's lateness (`now − due`).
fn lateness_of_releases(pacer: &mut Pacer, now: Instant) -> Vec<Duration> {
    let mut late = Vec::new();
    while let Some(t) = pacer.poll_transmit() {
        if let Transmit::Frame { .. } = t {
            let due = pacer.last_release_due().unwrap();
            assert!(due <= now, "a frame left before it was due");
            late.push(now - due);
        }
    }
    late
}

#[test]
fn release_due_is_the_deadline_so_on_time_wakeups_measure_zero_lateness() {
    let t0 = base();
    let mut pacer = Pacer::new(&PacerConfig::default()).unwrap();
    assert_eq!(pacer.last_release_due(), None);
    for i in 0..10 {
        pacer.push_frame(t0, frame(i)).unwrap();
    }
    // Lead 3: four frames are due at the anchor.
    assert_eq!(
        lateness_of_releases(&mut pacer, t0),
        vec![Duration::ZERO; 4]
    );
    let mut now = t0;
    while let Some(deadline) = pacer.poll_timeout() {
        now = deadline;
        pacer.handle_timeout(now);
        for late in lateness_of_releases(&mut pacer, now) {
            assert_eq!(late, Duration::ZERO);
        }
    }
    assert_eq!(now, t0 + ms(120));
}

#[test]
fn release_due_measures_a_late_wakeup_per_frame() {
    let t0 = base();
    let mut pacer = Pacer::new(&PacerConfig::default()).unwrap();
    for i in 0..10 {
        pacer.push_frame(t0, frame(i)).unwrap();
    }
    lateness_of_releases(&mut pacer, t0);
    // Frame 4 is due at 20 ms and frame 5 at 40 ms: waking at 47 ms releases both.
    let now = t0 + ms(47);
    pacer.handle_timeout(now);
    assert_eq!(lateness_of_releases(&mut pacer, now), vec![ms(27), ms(7)]);
}

#[test]
fn release_due_keeps_missed_deadlines_across_a_reanchor() {
    let t0 = base();
    let mut pacer = Pacer::new(&PacerConfig::default()).unwrap();
    for i in 0..20 {
        pacer.push_frame(t0, frame(i)).unwrap();
    }
    lateness_of_releases(&mut pacer, t0);
    // A 200 ms stall breaks the schedule: the re-anchor releases lead + 1 frames at once,
    // and they are measured against the deadlines they missed (20, 40, 60, 80 ms).
    let now = t0 + ms(200);
    pacer.handle_timeout(now);
    assert_eq!(pacer.stats().reanchors, 1);
    assert_eq!(
        lateness_of_releases(&mut pacer, now),
        vec![ms(180), ms(160), ms(140), ms(120)]
    );
    // The next frame is on the new schedule and on time.
    let next = pacer.poll_timeout().unwrap();
    assert_eq!(next, now + ms(20));
    pacer.handle_timeout(next);
    assert_eq!(lateness_of_releases(&mut pacer, next), vec![Duration::ZERO]);
}

#[test]
fn release_due_of_a_frame_pushed_after_its_deadline_is_its_push_time() {
    let t0 = base();
    let mut pacer = Pacer::new(&PacerConfig::default()).unwrap();
    for i in 0..4 {
        pacer.push_frame(t0, frame(i)).unwrap();
    }
    lateness_of_releases(&mut pacer, t0);
    // Frame 4 was due at 20 ms but only exists at 30 ms: it leaves at once, not late.
    let pushed = t0 + ms(30);
    pacer.push_frame(pushed, frame(4)).unwrap();
    assert_eq!(
        lateness_of_releases(&mut pacer, pushed),
        vec![Duration::ZERO]
    );
    assert_eq!(pacer.last_release_due(), Some(pushed));
}
