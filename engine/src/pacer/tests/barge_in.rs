//! Barge-in: `flush` drops everything queued and counts it, and `pause`/`resume` hold the
//! queue while a caller's onset awaits its check, keeping the schedule after a short pause and
//! starting a new one after a long pause.

use super::*;

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
