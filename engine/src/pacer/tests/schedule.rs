//! Frames leave on absolute deadlines from the anchor: the first `lead + 1` at once, then one
//! per frame; late wake-ups neither release early nor add up, overdue frames leave in one
//! capped burst, a stall beyond the lead re-anchors, and marks leave right after the frame
//! before them.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

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
